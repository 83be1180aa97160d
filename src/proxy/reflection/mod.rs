//! gRPC server reflection for every routed service (DESIGN §10), in both protocol versions.
//!
//! A reflection client (`grpcurl list`, Postman, evans) talks to the sidecar as if it were the server. The
//! sidecar answers what it knows itself — the schema compiled into it and any `--descriptor-set` — and forwards the
//! rest to the backends of the route that owns the symbol:
//!
//! - `ListServices`: the compiled services, every service routed by name, and, for a `*` route, what its target's
//!   backends list.
//! - `FileContainingSymbol`, `FileByFilename`, `FileContainingExtension`, `AllExtensionNumbersOfType` for
//!   something the sidecar does not know: asked of the owning route's target (a route for that service, or one
//!   for the same package), then of targets that already answered on this stream, then of the `*` route; the
//!   first answer that is not an error wins. A symbol nobody knows gets the reflection protocol's in-stream
//!   `NOT_FOUND` error response, as a server would send.
//!
//! The caller may speak `grpc.reflection.v1` or `v1alpha`, and so may each backend; [`upstream`] explains why
//! translating is only a path rewrite. The caller's version is tried first; on UNIMPLEMENTED the other one, and
//! the version that worked is remembered per target so later requests go straight to it.
//!
//! The stream is handled as a stream: requests are answered one by one, in order, each as soon as it is known.
//! Layering: this module uses [`crate::balance`] (through the route table's balancers) and is used by the proxy,
//! never the other way round.

mod local;
mod owners;
pub mod schema;
pub mod upstream;

use std::{
    collections::{BTreeSet, HashMap},
    convert::Infallible,
    sync::Arc,
};

use parking_lot::Mutex;

use crate::proxy::request_body::RequestBody;
use http::{Request, Response, Uri};
use prost_reflect::DescriptorPool;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};
use tonic_reflection::pb::v1::{
    ErrorResponse, ExtensionNumberResponse, FileDescriptorResponse, ListServiceResponse, ServerReflectionRequest,
    ServerReflectionResponse, ServiceResponse,
    server_reflection_request::MessageRequest,
    server_reflection_response::MessageResponse,
    server_reflection_server::{ServerReflection, ServerReflectionServer},
};
use tower::{ServiceExt, util::BoxCloneSyncService};

use self::owners::StreamState;
pub use self::upstream::Version;
use crate::{proxy::Balancer, routes::RouteTable};

/// A reflection service as the proxy mounts it (the same shape as its other local services).
pub type ReflectionService = BoxCloneSyncService<Request<RequestBody>, Response<tonic::body::Body>, Infallible>;

/// What reflection knows: the schemas held here, the routes, and which version each target speaks.
pub struct Reflector {
    /// Held schemas, asked in order: the compiled one (with health and reflection), then `--descriptor-set`.
    pools: Vec<DescriptorPool>,
    routes: RouteTable<Arc<Balancer>>,
    /// The reflection version each target (by name) answered in last.
    versions: Mutex<HashMap<String, Version>>,
}

impl Reflector {
    /// Reflection over `pools` (the compiled schema first) and the route table's targets.
    pub fn new(pools: Vec<DescriptorPool>, routes: RouteTable<Arc<Balancer>>) -> Arc<Self> {
        Arc::new(Self { pools, routes, versions: Mutex::default() })
    }

    /// The schema compiled into the binary, with `grpc.health.v1` and both reflection versions: what the sidecar
    /// serves itself.
    pub fn compiled() -> DescriptorPool {
        let mut pool = DescriptorPool::new();
        for set in [
            crate::pb::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ] {
            if let Err(e) = pool.decode_file_descriptor_set(set) {
                tracing::warn!(error = %e, "a compiled descriptor set does not load; reflection lacks it");
            }
        }
        pool
    }

    /// The held schemas, compiled first.
    pub fn pools(&self) -> &[DescriptorPool] {
        &self.pools
    }

    /// The `grpc.reflection.v1` and `v1alpha` services. One implementation serves both: a v1alpha call's path is
    /// rewritten to v1 (the messages are the same bytes, see [`upstream`]) and its version kept as a request
    /// extension, so it is the version tried first at the backends.
    pub fn services(self: &Arc<Self>) -> (ReflectionService, ReflectionService) {
        let server = ServerReflectionServer::new(Handler(self.clone()));
        let v1alpha = server.clone().map_request(|mut req: Request<RequestBody>| {
            *req.uri_mut() = Uri::from_static(Version::V1.path());
            req.extensions_mut().insert(Version::V1Alpha);
            req
        });
        (BoxCloneSyncService::new(server), BoxCloneSyncService::new(v1alpha))
    }

    /// Sends `req` to `balancer`'s backends: in the version the target last answered in, else the caller's; on
    /// UNIMPLEMENTED in the other version. Remembers the one that worked.
    pub async fn ask(
        &self,
        balancer: &Balancer,
        pinned: &mut upstream::Pinned,
        caller: Version,
        req: &ServerReflectionRequest,
    ) -> Result<ServerReflectionResponse, Status> {
        let known = self.versions.lock().get(balancer.target()).copied();
        let first = known.unwrap_or(caller);
        let (version, answer) = match upstream::call(balancer, pinned, first, req).await {
            Err(s) if s.code() == Code::Unimplemented => {
                let second = first.other();
                match upstream::call(balancer, pinned, second, req).await {
                    Err(s) if s.code() == Code::Unimplemented => {
                        let msg = format!("the backends of {} serve no gRPC server reflection", balancer.target());
                        return Err(Status::unimplemented(msg));
                    }
                    answer => (second, answer),
                }
            }
            answer => (first, answer),
        };
        if answer.is_ok() && known != Some(version) {
            tracing::debug!(target = balancer.target(), ?version, "reflection version of the target");
            self.versions.lock().insert(balancer.target().to_owned(), version);
        }
        answer
    }

    /// The answer to one request of a caller's stream.
    async fn answer(&self, stream: &mut StreamState, caller: Version, req: ServerReflectionRequest) -> MessageResponse {
        let Some(request) = req.message_request.clone() else {
            return error(Code::InvalidArgument, "empty reflection request");
        };
        if let Some(held) = self.held(&request) {
            return held;
        }
        let candidates = match &request {
            MessageRequest::ListServices(_) => return self.list_services(stream, caller, &req).await,
            MessageRequest::FileByFilename(name) => self.owners_of_file(stream, name),
            MessageRequest::FileContainingSymbol(symbol) => self.owners_of_symbol(stream, symbol),
            MessageRequest::FileContainingExtension(ext) => self.owners_of_symbol(stream, &ext.containing_type),
            MessageRequest::AllExtensionNumbersOfType(ty) => self.owners_of_symbol(stream, ty),
        };
        let mut first_error = None;
        for balancer in candidates {
            let answer = self.ask(&balancer, stream.pinned(balancer.target()), caller, &req).await;
            let answer = match answer {
                Ok(res) => res.message_response.unwrap_or_else(|| error(Code::Internal, "empty answer")),
                Err(s) => error(s.code(), s.message()),
            };
            if !matches!(answer, MessageResponse::ErrorResponse(_)) {
                stream.answered(balancer);
                return answer;
            }
            first_error.get_or_insert(answer);
        }
        first_error.unwrap_or_else(|| error(Code::NotFound, &format!("{}: not found", describe(&request))))
    }

    /// The answer from a held schema, if one has it (`ListServices` is never answered from these alone).
    fn held(&self, request: &MessageRequest) -> Option<MessageResponse> {
        let files = |f| {
            Some(MessageResponse::FileDescriptorResponse(FileDescriptorResponse {
                file_descriptor_proto: local::with_dependencies(f),
            }))
        };
        self.pools.iter().find_map(|pool| match request {
            MessageRequest::ListServices(_) => None,
            MessageRequest::FileByFilename(name) => pool.get_file_by_name(name).and_then(files),
            MessageRequest::FileContainingSymbol(symbol) => local::file_of_symbol(pool, symbol).and_then(files),
            MessageRequest::FileContainingExtension(ext) => {
                local::file_of_extension(pool, &ext.containing_type, ext.extension_number).and_then(files)
            }
            MessageRequest::AllExtensionNumbersOfType(ty) => local::extension_numbers(pool, ty).map(|numbers| {
                MessageResponse::AllExtensionNumbersResponse(ExtensionNumberResponse {
                    base_type_name: ty.clone(),
                    extension_number: numbers,
                })
            }),
        })
    }

    /// The held services, every service routed by name, and what the `*` route's backends list.
    async fn list_services(
        &self,
        stream: &mut StreamState,
        caller: Version,
        req: &ServerReflectionRequest,
    ) -> MessageResponse {
        let mut names: BTreeSet<String> = self.pools.iter().flat_map(local::services).collect();
        names.extend(self.routes.services().map(|(s, _)| s.to_owned()));
        if let Some(default) = self.routes.default_route() {
            match self.ask(default, stream.pinned(default.target()), caller, req).await {
                Ok(ServerReflectionResponse {
                    message_response: Some(MessageResponse::ListServicesResponse(list)),
                    ..
                }) => names.extend(list.service.into_iter().map(|s| s.name)),
                other => {
                    let why = match other {
                        Err(s) => s.message().to_owned(),
                        Ok(_) => "not a service list".into(),
                    };
                    tracing::warn!(target = default.target(), %why, "the * route's services are not listed");
                }
            }
        }
        MessageResponse::ListServicesResponse(ListServiceResponse {
            service: names.into_iter().map(|name| ServiceResponse { name }).collect(),
        })
    }
}

fn describe(request: &MessageRequest) -> String {
    match request {
        MessageRequest::FileByFilename(f) => format!("file {f}"),
        MessageRequest::FileContainingSymbol(s) => format!("symbol {s}"),
        MessageRequest::FileContainingExtension(e) => {
            format!("extension {} of {}", e.extension_number, e.containing_type)
        }
        MessageRequest::AllExtensionNumbersOfType(t) => format!("type {t}"),
        MessageRequest::ListServices(_) => "services".into(),
    }
}

/// The reflection protocol's in-stream error: the stream goes on.
fn error(code: Code, message: &str) -> MessageResponse {
    MessageResponse::ErrorResponse(ErrorResponse { error_code: code as i32, error_message: message.to_owned() })
}

/// A caller's request that could not be received, with the code gRPC gives it: tonic's decoder reports a message
/// over the limit as OUT_OF_RANGE, the gRPC status code doc (and the proxy's own calls) RESOURCE_EXHAUSTED.
fn receive_error(status: Status) -> Status {
    match status.code() {
        Code::OutOfRange => Status::resource_exhausted(status.message()),
        _ => status,
    }
}

/// The generated server's handler over the shared [`Reflector`].
struct Handler(Arc<Reflector>);

#[tonic::async_trait]
impl ServerReflection for Handler {
    type ServerReflectionInfoStream = ReceiverStream<Result<ServerReflectionResponse, Status>>;

    async fn server_reflection_info(
        &self,
        request: tonic::Request<Streaming<ServerReflectionRequest>>,
    ) -> Result<tonic::Response<Self::ServerReflectionInfoStream>, Status> {
        let caller = request.extensions().get::<Version>().copied().unwrap_or(Version::V1);
        let mut requests = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let reflector = self.0.clone();
        tokio::spawn(async move {
            let mut stream = StreamState::default();
            loop {
                let req = match requests.message().await {
                    Ok(Some(req)) => req,
                    Ok(None) => return,
                    Err(status) => {
                        let _ = tx.send(Err(receive_error(status))).await;
                        return;
                    }
                };
                let answer = reflector.answer(&mut stream, caller, req.clone()).await;
                let res = ServerReflectionResponse {
                    valid_host: req.host.clone(),
                    original_request: Some(req),
                    message_response: Some(answer),
                };
                if tx.send(Ok(res)).await.is_err() {
                    return;
                }
            }
        });
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }
}
