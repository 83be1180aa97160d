//! A test-only gRPC service the sidecar was not compiled with (`proto/echo/v1/echo.proto`), served by tonic in the
//! test process: unary, server-, client- and bidi-streaming, to prove a route carries any service untouched.

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

pub mod pb {
    tonic::include_proto!("echo.v1");

    /// The encoded descriptor set of `echo.proto` (build.rs writes it), for the backends' reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("echo_descriptor");
}

/// Which gRPC server reflection an echo backend serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reflection {
    /// None: the sidecar cannot learn the schema from it.
    None,
    /// `grpc.reflection.v1` only.
    V1,
    /// `grpc.reflection.v1alpha` only, as many deployed servers.
    V1Alpha,
}

use pb::{
    EchoRequest, EchoResponse,
    echo_service_server::{EchoService, EchoServiceServer},
};

/// Counters a test reads.
#[derive(Default)]
pub struct EchoStats {
    /// Calls whose handler started.
    pub calls: AtomicU64,
    /// Server streams that ended because the caller went away (a send found no receiver).
    pub cancelled: AtomicU64,
    /// The path of every request that reached the server, in order.
    pub paths: std::sync::Mutex<Vec<String>>,
}

impl EchoStats {
    /// How many requests had this path.
    pub fn path_count(&self, path: &str) -> usize {
        self.paths.lock().expect("paths").iter().filter(|p| *p == path).count()
    }
}

/// A running echo backend.
pub struct EchoBackend {
    pub addr: SocketAddr,
    pub id: String,
    pub stats: Arc<EchoStats>,
    /// Ends the server (see [`EchoBackend::stop`]).
    shutdown: Option<(tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>)>,
}

impl EchoBackend {
    pub async fn start(id: &str) -> Self {
        Self::start_at(super::fresh_ip(), id).await
    }

    pub async fn start_at(ip: std::net::Ipv4Addr, id: &str) -> Self {
        Self::start_with(ip, id, Reflection::None).await
    }

    /// A backend that also serves reflection in the given version.
    pub async fn start_with(ip: std::net::Ipv4Addr, id: &str, reflection: Reflection) -> Self {
        Self::start_with_schema(ip, id, reflection, pb::FILE_DESCRIPTOR_SET).await
    }

    /// A backend whose reflection describes `set` (an encoded `FileDescriptorSet`) rather than echo.proto as
    /// compiled: another build's schema, older or newer than the code that answers.
    pub async fn start_with_schema(ip: std::net::Ipv4Addr, id: &str, reflection: Reflection, set: &[u8]) -> Self {
        let addr = SocketAddr::from((ip, super::BACKEND_PORT));
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        let stats = Arc::new(EchoStats::default());
        let svc = Echo { id: id.to_owned(), stats: stats.clone() };
        let builder = || tonic_reflection::server::Builder::configure().register_encoded_file_descriptor_set(set);
        let (v1, v1alpha) = match reflection {
            Reflection::None => (None, None),
            Reflection::V1 => (Some(builder().build_v1().expect("v1 reflection")), None),
            Reflection::V1Alpha => (None, Some(builder().build_v1alpha().expect("v1alpha reflection"))),
        };
        let seen = stats.clone();
        let record = tower::util::MapRequestLayer::new(move |req: http::Request<tonic::body::Body>| {
            seen.paths.lock().expect("paths").push(req.uri().path().to_owned());
            req
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .layer(record)
                .add_service(EchoServiceServer::new(svc))
                .add_optional_service(v1)
                .add_optional_service(v1alpha)
                .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async {
                    // Dropping the backend without `stop` leaves it serving, as before.
                    if stopped.await.is_err() {
                        std::future::pending::<()>().await;
                    }
                })
                .await;
        });
        Self { addr, id: id.to_owned(), stats, shutdown: Some((stop, server)) }
    }

    /// Stops the server as a rolling update stops a pod: no new connections, open ones told GOAWAY; returns once
    /// the address is free for the next build.
    pub async fn stop(mut self) {
        if let Some((stop, server)) = self.shutdown.take() {
            let _ = stop.send(());
            let _ = server.await;
        }
    }
}

struct Echo {
    id: String,
    stats: Arc<EchoStats>,
}

impl Echo {
    fn reply(&self, message: String, index: u32) -> EchoResponse {
        EchoResponse { message, server: self.id.clone(), index }
    }

    fn check(&self, req: &EchoRequest) -> Result<(), Status> {
        match req.message.strip_prefix("unavailable-on:") {
            Some(id) if id == self.id => Err(Status::unavailable(format!("{} is unavailable on purpose", self.id))),
            _ => Ok(()),
        }
    }
}

type Out = Pin<Box<dyn Stream<Item = Result<EchoResponse, Status>> + Send>>;

#[tonic::async_trait]
impl EchoService for Echo {
    async fn echo(&self, req: Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
        self.stats.calls.fetch_add(1, Ordering::SeqCst);
        self.check(req.get_ref())?;
        Ok(Response::new(self.reply(req.into_inner().message, 0)))
    }

    type ServerStreamStream = Out;

    async fn server_stream(&self, req: Request<EchoRequest>) -> Result<Response<Out>, Status> {
        self.stats.calls.fetch_add(1, Ordering::SeqCst);
        let req = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let (id, stats) = (self.id.clone(), self.stats.clone());
        tokio::spawn(async move {
            for index in 0..req.count {
                tokio::time::sleep(Duration::from_millis(u64::from(req.delay_ms))).await;
                let msg = EchoResponse { message: format!("{}#{index}", req.message), server: id.clone(), index };
                if tx.send(Ok(msg)).await.is_err() {
                    stats.cancelled.fetch_add(1, Ordering::SeqCst);
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn client_stream(&self, req: Request<Streaming<EchoRequest>>) -> Result<Response<EchoResponse>, Status> {
        self.stats.calls.fetch_add(1, Ordering::SeqCst);
        let mut stream = req.into_inner();
        let mut all = Vec::new();
        while let Some(m) = stream.next().await {
            all.push(m?.message);
        }
        Ok(Response::new(self.reply(all.join(","), 0)))
    }

    type BidiStream = Out;

    async fn bidi(&self, req: Request<Streaming<EchoRequest>>) -> Result<Response<Out>, Status> {
        self.stats.calls.fetch_add(1, Ordering::SeqCst);
        let id = self.id.clone();
        let mut index = 0;
        let out = req.into_inner().map(move |m| {
            let m = m?;
            let reply = EchoResponse { message: m.message, server: id.clone(), index };
            index += 1;
            Ok(reply)
        });
        Ok(Response::new(Box::pin(out)))
    }
}
