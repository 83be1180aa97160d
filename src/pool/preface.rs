//! Whether the peer has spoken: a connection is up only once the server's HTTP/2 preface (its SETTINGS frame,
//! RFC 9113 §3.4) has arrived, as grpc-go marks a transport ready only on the server preface.
//!
//! A TCP connect alone proves nothing: the kernel completes handshakes on any bound listening socket, also one
//! whose server has stopped accepting (a backend draining after SIGTERM keeps its socket until its last call
//! ends). hyper's client handshake returns without reading anything, so such a connection looked ready, and health
//! went NOT_SERVING, SERVING, NOT_SERVING within 0.1 s when a backend died.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::oneshot,
};

/// An I/O stream that reports its first bytes read (the server's preface) once, through a oneshot, and counts
/// its reads (the keepalive's sign of life, [`super::driver`]).
pub struct Heard<S> {
    inner: S,
    first_read: Option<oneshot::Sender<()>>,
    reads: Arc<AtomicU64>,
}

impl<S> Heard<S> {
    /// `inner`, and what resolves once bytes have been read from it.
    pub(super) fn new(inner: S) -> (Self, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        (Self { inner, first_read: Some(tx), reads: Arc::default() }, rx)
    }

    /// How many reads returned bytes so far.
    pub(super) fn reads(&self) -> Arc<AtomicU64> {
        self.reads.clone()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Heard<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(res, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.reads.fetch_add(1, Relaxed);
        }
        if this.first_read.is_some()
            && matches!(res, Poll::Ready(Ok(())))
            && buf.filled().len() > before
            && let Some(tx) = this.first_read.take()
        {
            let _ = tx.send(());
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Heard<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn reports_the_first_bytes_read_and_not_an_end_of_stream() {
        let (a, mut b) = tokio::io::duplex(64);
        let (mut heard, mut first) = Heard::new(a);
        heard.write_all(b"client preface").await.expect("write");
        let mut got = [0u8; 14];
        b.read_exact(&mut got).await.expect("read");
        assert!(first.try_recv().is_err(), "writing is not hearing");
        b.write_all(b"settings").await.expect("write");
        let mut buf = [0u8; 8];
        heard.read_exact(&mut buf).await.expect("read");
        assert_eq!(first.await, Ok(()));

        let (a, b) = tokio::io::duplex(64);
        let (mut heard, first) = Heard::new(a);
        drop(b);
        assert_eq!(heard.read(&mut buf).await.expect("eof"), 0);
        drop(heard);
        assert!(first.await.is_err(), "a peer that closed without a byte was never heard");
    }
}
