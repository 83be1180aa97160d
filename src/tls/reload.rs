//! Config that follows its files: read them every few seconds and rebuild when their contents change.
//!
//! Polling contents, not watching inodes: Kubernetes updates a secret volume by swapping a `..data` symlink,
//! which inotify on the file path does not see, and cert-manager's CSI driver rewrites files in place. A change
//! that does not build (a key written before its certificate) keeps the old config and is tried again on the
//! next poll; the bad state is logged once.

use std::{
    path::PathBuf,
    sync::{Arc, Weak},
    time::Duration,
};

use parking_lot::RwLock;
use tokio::sync::watch;
use tracing::{info, warn};

use super::TlsError;

/// How often the files are read.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// A value built from files, rebuilt when they change.
pub struct Reloading<T> {
    current: RwLock<Arc<T>>,
    generation: watch::Sender<u64>,
}

impl<T: Send + Sync + 'static> Reloading<T> {
    /// Reads `files` (each with the flag that named it), builds the first value, and polls every `interval` from
    /// a background task that ends when the returned value is dropped. Must run inside a Tokio runtime.
    pub fn spawn<F>(files: Vec<(&'static str, PathBuf)>, build: F, interval: Duration) -> Result<Arc<Self>, TlsError>
    where
        F: Fn(&[Vec<u8>]) -> Result<T, TlsError> + Send + Sync + 'static,
    {
        let contents = read_all(&files)?;
        let first = build(&contents)?;
        warn_if_expired(&files, &contents);
        let this = Arc::new(Self { current: RwLock::new(Arc::new(first)), generation: watch::Sender::new(0) });
        tokio::spawn(poll(Arc::downgrade(&this), files, contents, build, interval));
        Ok(this)
    }

    /// The value in use now.
    pub fn current(&self) -> Arc<T> {
        self.current.read().clone()
    }

    /// Changes whenever a new value is in place.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }
}

fn read_all(files: &[(&'static str, PathBuf)]) -> Result<Vec<Vec<u8>>, TlsError> {
    files.iter().map(|(flag, path)| super::read(flag, path)).collect()
}

async fn poll<T, F>(
    this: Weak<Reloading<T>>,
    files: Vec<(&'static str, PathBuf)>,
    mut last: Vec<Vec<u8>>,
    build: F,
    interval: Duration,
) where
    F: Fn(&[Vec<u8>]) -> Result<T, TlsError>,
{
    let mut last_error: Option<String> = None;
    loop {
        tokio::time::sleep(interval).await;
        let Some(this) = this.upgrade() else { return };
        let contents = match read_all(&files) {
            Ok(c) => c,
            Err(e) => {
                note_error(&mut last_error, e.to_string());
                continue;
            }
        };
        if contents == last {
            continue;
        }
        match build(&contents) {
            Ok(value) => {
                *this.current.write() = Arc::new(value);
                this.generation.send_modify(|g| *g = g.wrapping_add(1));
                let names: Vec<String> = files.iter().map(|(_, p)| p.display().to_string()).collect();
                match leaf(&files, &contents) {
                    Some(l) => {
                        info!(files = ?names, serial = %l.serial, not_after = %l.not_after, "tls: certificates reloaded")
                    }
                    None => info!(files = ?names, "tls: certificates reloaded"),
                }
                warn_if_expired(&files, &contents);
                last = contents;
                last_error = None;
            }
            Err(e) => note_error(&mut last_error, e.to_string()),
        }
    }
}

/// Serial and expiry of the `--tls-cert` leaf among `files`.
fn leaf(files: &[(&'static str, PathBuf)], contents: &[Vec<u8>]) -> Option<super::leaf::LeafInfo> {
    let i = files.iter().position(|(flag, _)| *flag == "--tls-cert")?;
    super::leaf::leaf_info_pem(contents.get(i)?)
}

/// Our own certificate expired: peers will refuse it. Warn (it still loads: the renewal may be on its way).
fn warn_if_expired(files: &[(&'static str, PathBuf)], contents: &[Vec<u8>]) {
    if let Some(l) = leaf(files, contents).filter(|l| l.expired_at(std::time::SystemTime::now())) {
        warn!(serial = %l.serial, not_after = %l.not_after, "tls: our own certificate (--tls-cert) has expired; peers will refuse it until it is renewed");
    }
}

fn note_error(last: &mut Option<String>, error: String) {
    if last.as_deref() != Some(error.as_str()) {
        warn!(%error, "tls: changed certificate files do not load; keeping the previous ones");
        *last = Some(error);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_change_is_picked_up_and_a_bad_one_keeps_the_old_value() {
        let dir = std::env::temp_dir().join(format!("hello-sidecar-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("value");
        std::fs::write(&file, "1").unwrap();
        let build =
            |c: &[Vec<u8>]| String::from_utf8_lossy(&c[0]).parse::<u32>().map_err(|e| TlsError::Config(e.to_string()));
        let r = Reloading::spawn(vec![("--x", file.clone())], build, Duration::from_millis(10)).unwrap();
        let mut changes = r.subscribe();
        assert_eq!(*r.current(), 1);
        std::fs::write(&file, "2").unwrap();
        tokio::time::timeout(Duration::from_secs(10), changes.changed()).await.unwrap().unwrap();
        assert_eq!(*r.current(), 2);
        std::fs::write(&file, "not a number").unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(*r.current(), 2, "a broken file keeps the last good value");
        std::fs::write(&file, "3").unwrap();
        tokio::time::timeout(Duration::from_secs(10), changes.changed()).await.unwrap().unwrap();
        assert_eq!(*r.current(), 3);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
