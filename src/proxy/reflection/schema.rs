//! Message types for Connect JSON to routed services (issue 12.5): a method's schema from what the sidecar holds
//! (compiled in, `--descriptor-set`), else learned from the route's backends through server reflection.
//!
//! Learned schemas are cached per target: the first JSON call to a service asks one backend for the file that
//! defines the service (`FileContainingSymbol`) and then for every dependency the answer lacks
//! (`FileByFilename`), all on one pinned endpoint so the files come from one build. The cache follows the
//! backends' builds: a method missing from it is looked up again (a newer build may have added it; the files
//! fetched replace those of the same name), a message that does not map makes the caller learn again
//! ([`Schemas::relearn`]), and a lookup the backends refused (no reflection) is remembered for [`RETRY_AFTER`], so
//! such a backend costs one lookup per few seconds, not one per call. A lookup that found no endpoint is not
//! remembered: the caller gets UNAVAILABLE, as a gRPC call would.

use std::{collections::HashMap, sync::Arc, time::Duration};

use parking_lot::Mutex;

use prost::Message;
use prost_reflect::{DescriptorPool, MethodDescriptor, prost_types::FileDescriptorProto};
use tokio::time::Instant;
use tonic::Code;
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

use super::{Reflector, Version, upstream::Pinned};
use crate::proxy::Balancer;

/// How long a failed reflection lookup is remembered before the next call tries again.
pub const RETRY_AFTER: Duration = Duration::from_secs(5);
/// Files fetched for one service at most (the file and its transitive dependencies).
const MAX_FILES: usize = 256;

/// A target's learned schema (and when it was fetched), or why it could not be learned (and when).
#[derive(Clone)]
enum Cached {
    Pool { pool: DescriptorPool, at: Instant },
    Failed { at: Instant, until: Instant, why: Unlearned },
}

/// Why a method's schema could not be learned, with the code a Connect caller gets: UNAVAILABLE (or
/// DEADLINE_EXCEEDED) when the backends could not be asked — what a gRPC call to them would get — and
/// UNIMPLEMENTED when they answered but serve no reflection or do not define the method.
#[derive(Debug, Clone)]
pub struct Unlearned {
    /// The status a Connect caller gets.
    pub code: Code,
    /// Why, for the caller's message.
    pub why: String,
    /// The backends' schema defines the service but not the method: the caller named a method that does not
    /// exist (a schema from elsewhere would not help, unlike when reflection is missing).
    pub unknown_method: bool,
    /// The backends serve reflection but refused this service's lookup (an error response or status, e.g.
    /// NOT_FOUND for a service they lack): it says nothing of the target's other services, so it is not
    /// remembered for the target.
    this_service_only: bool,
}

impl Unlearned {
    /// Not learned for a reason other than an unknown method.
    fn new(code: Code, why: String) -> Self {
        Self { code, why, unknown_method: false, this_service_only: false }
    }
}

/// Connect JSON's schemas: held ones, then learned per target.
pub struct Schemas {
    reflector: Arc<Reflector>,
    learned: Mutex<HashMap<String, Cached>>,
    /// One lookup at a time per target: calls that need it meanwhile wait for its result rather than each asking
    /// the backends (a burst of first calls would otherwise be a burst of lookups).
    flights: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Schemas {
    /// Schemas over the reflector's held pools and its routes' backends.
    pub fn new(reflector: Arc<Reflector>) -> Self {
        Self { reflector, learned: Mutex::default(), flights: Mutex::default() }
    }

    /// The method a path (`/pkg.Service/Method`) names, from a schema the sidecar holds.
    pub fn held(&self, path: &str) -> Option<MethodDescriptor> {
        let (service, method) = split(path)?;
        self.reflector.pools().iter().find_map(|p| find(p, service, method))
    }

    /// The method a path names on `balancer`'s target, learned through reflection (cached), or why it is not
    /// known. A method missing from the cached schema is looked up again: a newer build may have added it.
    pub async fn learned(&self, balancer: &Balancer, path: &str) -> Result<MethodDescriptor, Unlearned> {
        let (service, method) = split(path)
            .ok_or_else(|| Unlearned::new(Code::Unimplemented, format!("{path} is not /package.Service/Method")))?;
        let target = balancer.target();
        let asked = Instant::now();
        if let Some(known) = self.cached_answer(target, service, method, None) {
            return known;
        }
        let flight = self.flight(target);
        let _one = flight.lock().await;
        // Learned (or failed) by another call while this one waited: its answer is this one's too.
        if let Some(known) = self.cached_answer(target, service, method, Some(asked)) {
            return known;
        }
        let previous = match self.cached(target) {
            Some(Cached::Pool { pool, .. }) => Some(pool),
            _ => None,
        };
        self.learn(balancer, service, method, previous.as_ref()).await
    }

    /// The method a path names, learned again from `balancer`'s backends because a message did not map with the
    /// cached schema (the backends may run a newer build); `None` when it was learned less than `min_age` ago
    /// (nothing newer to expect) or cannot be learned now.
    pub async fn relearn(&self, balancer: &Balancer, path: &str, min_age: Duration) -> Option<MethodDescriptor> {
        let (service, method) = split(path)?;
        let target = balancer.target();
        let asked = Instant::now();
        let flight = self.flight(target);
        let _one = flight.lock().await;
        let previous = match self.cached(target) {
            // Learned again by another call while this one waited.
            Some(Cached::Pool { pool, at }) if at >= asked => return find(&pool, service, method),
            Some(Cached::Pool { at, .. }) if at.elapsed() < min_age => return None,
            Some(Cached::Pool { pool, .. }) => Some(pool),
            _ => None,
        };
        self.learn(balancer, service, method, previous.as_ref()).await.ok()
    }

    /// The cached answer for a method: found, or a failure still remembered; with `fresh_since`, also an answer
    /// learned or failed since then (a pool without the method, a failure no longer remembered for new calls).
    fn cached_answer(
        &self,
        target: &str,
        service: &str,
        method: &str,
        fresh_since: Option<Instant>,
    ) -> Option<Result<MethodDescriptor, Unlearned>> {
        let fresh = |at: Instant| fresh_since.is_some_and(|t| at >= t);
        match self.cached(target)? {
            Cached::Pool { pool, at } => match find(&pool, service, method) {
                Some(m) => Some(Ok(m)),
                None if fresh(at) => Some(Err(not_defined(&pool, target, service, method))),
                None => None,
            },
            Cached::Failed { at, until, why } if fresh(at) || Instant::now() < until => Some(Err(why)),
            Cached::Failed { .. } => None,
        }
    }

    fn cached(&self, target: &str) -> Option<Cached> {
        self.learned.lock().get(target).cloned()
    }

    fn flight(&self, target: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut flights = self.flights.lock();
        flights.entry(target.to_owned()).or_default().clone()
    }

    /// Fetches `service`'s files from the target and caches them, ahead of what `previous` held for its other
    /// services (a file of the same name is the fetched one: the backends' build now).
    async fn learn(
        &self,
        balancer: &Balancer,
        service: &str,
        method: &str,
        previous: Option<&DescriptorPool>,
    ) -> Result<MethodDescriptor, Unlearned> {
        let target = balancer.target();
        let fetched = fetch(&self.reflector, balancer, service).await.and_then(|files| {
            let mut pool = DescriptorPool::new();
            pool.add_file_descriptor_protos(files)
                .map_err(|e| Unlearned::new(Code::Unimplemented, format!("invalid schema: {e}")))?;
            for file in previous.into_iter().flat_map(|p| p.files()) {
                // Another service's file stays unless it clashes with the new build's (then it is fetched anew).
                let _ = pool.add_file_descriptor_proto(file.file_descriptor_proto().clone());
            }
            Ok(pool)
        });
        let mut learned = self.learned.lock();
        let pool = match fetched {
            Ok(pool) => pool,
            Err(Unlearned { code, why, this_service_only, .. }) => {
                let why =
                    Unlearned { this_service_only, ..Unlearned::new(code, format!("reflection at {target}: {why}")) };
                if this_service_only {
                    // The schema learned for the target's other services stays; a lookup for a service the
                    // backends lack costs one round trip per call, as the call itself would.
                    return Err(why);
                }
                // Backends without reflection cost one lookup per few seconds; unreachable ones are asked again
                // by the next call (calls that waited for this lookup share its answer), which waits for an
                // endpoint as any call does.
                let at = Instant::now();
                let until = if code == Code::Unimplemented { at + RETRY_AFTER } else { at };
                learned.insert(target.to_owned(), Cached::Failed { at, until, why: why.clone() });
                return Err(why);
            }
        };
        learned.insert(target.to_owned(), Cached::Pool { pool: pool.clone(), at: Instant::now() });
        find(&pool, service, method).ok_or_else(|| not_defined(&pool, target, service, method))
    }
}

/// Why `pool`, learned from `target`'s backends, has no `/service/method`: an unknown method of a service it
/// defines (worded as grpc-go's server says it), or a service it lacks.
fn not_defined(pool: &DescriptorPool, target: &str, service: &str, method: &str) -> Unlearned {
    if pool.get_service_by_name(service).is_some() {
        let why = format!("unknown method {method} for service {service} (server reflection at {target})");
        return Unlearned { code: Code::Unimplemented, why, unknown_method: true, this_service_only: false };
    }
    Unlearned::new(Code::Unimplemented, format!("the backends of {target} do not define /{service}/{method}"))
}

fn split(path: &str) -> Option<(&str, &str)> {
    path.strip_prefix('/')?.split_once('/')
}

fn find(pool: &DescriptorPool, service: &str, method: &str) -> Option<MethodDescriptor> {
    pool.get_service_by_name(service)?.methods().find(|m| m.name() == method)
}

/// The file defining `service` and every file it depends on, from one endpoint of the target.
async fn fetch(
    reflector: &Reflector,
    balancer: &Balancer,
    service: &str,
) -> Result<Vec<FileDescriptorProto>, Unlearned> {
    let unimplemented = |why: String| Unlearned::new(Code::Unimplemented, why);
    let mut pinned = Pinned::default();
    let mut files: Vec<FileDescriptorProto> = Vec::new();
    let mut wanted = vec![MessageRequest::FileContainingSymbol(service.to_owned())];
    let mut asked = 0;
    while let Some(request) = wanted.pop() {
        asked += 1;
        if asked > MAX_FILES {
            return Err(unimplemented(format!("{service} needs more than {MAX_FILES} files")));
        }
        let req = ServerReflectionRequest { host: String::new(), message_request: Some(request) };
        let res = reflector.ask(balancer, &mut pinned, Version::V1, &req).await.map_err(|s| {
            // The backends could not be asked (no endpoint, a failed connection, too slow): as for a call.
            // Any other refusal comes from backends that serve reflection (tonic's: NOT_FOUND for a symbol they
            // lack) and is about this service only.
            let (code, this_service_only) = match s.code() {
                Code::Unavailable | Code::DeadlineExceeded => (s.code(), false),
                Code::Unimplemented => (Code::Unimplemented, false),
                _ => (Code::Unimplemented, true),
            };
            Unlearned { this_service_only, ..Unlearned::new(code, s.message().to_owned()) }
        })?;
        let got = match res.message_response {
            Some(MessageResponse::FileDescriptorResponse(f)) => f.file_descriptor_proto,
            Some(MessageResponse::ErrorResponse(e)) => {
                return Err(Unlearned { this_service_only: true, ..unimplemented(e.error_message) });
            }
            _ => return Err(unimplemented("unexpected answer".into())),
        };
        for raw in got {
            let file =
                FileDescriptorProto::decode(raw.as_slice()).map_err(|e| unimplemented(format!("invalid file: {e}")))?;
            if !files.iter().any(|f| f.name == file.name) {
                files.push(file);
            }
        }
        for dep in files.iter().flat_map(|f| f.dependency.iter()) {
            let missing = !files.iter().any(|f| f.name.as_deref() == Some(dep.as_str()));
            let asked = wanted.iter().any(|w| matches!(w, MessageRequest::FileByFilename(n) if n == dep));
            if missing && !asked {
                wanted.push(MessageRequest::FileByFilename(dep.clone()));
            }
        }
    }
    Ok(files)
}
