//! Message types for Connect JSON to routed services (issue 12.5): a method's schema from what the sidecar holds
//! (compiled in, `--descriptor-set`), else learned from the route's backends through server reflection.
//!
//! Learned schemas are cached per target: the first JSON call to a service asks one backend for the file that
//! defines the service (`FileContainingSymbol`) and then for every dependency the answer lacks
//! (`FileByFilename`), all on one pinned endpoint so the files come from one build. The cache is refreshed on
//! failure: a method missing from it is looked up again (a newer build may have added it), the caller can ask for
//! a fresh copy when a message does not map ([`Schemas::refresh`]), and a failed lookup is remembered only for
//! [`RETRY_AFTER`], so a backend without reflection costs one lookup per few seconds, not one per call.

use std::{collections::HashMap, sync::Arc, time::Duration};

use parking_lot::Mutex;
use tokio::time::Instant;

use prost::Message;
use prost_reflect::{DescriptorPool, MethodDescriptor, prost_types::FileDescriptorProto};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

use super::{Reflector, Version, upstream::Pinned};
use crate::proxy::Balancer;

/// How long a failed reflection lookup is remembered before the next call tries again.
pub const RETRY_AFTER: Duration = Duration::from_secs(5);
/// Files fetched for one service at most (the file and its transitive dependencies).
const MAX_FILES: usize = 256;

/// A target's learned schema, or why it could not be learned.
enum Cached {
    Pool(DescriptorPool),
    Failed { until: Instant, why: String },
}

/// Connect JSON's schemas: held ones, then learned per target.
pub struct Schemas {
    reflector: Arc<Reflector>,
    learned: Mutex<HashMap<String, Cached>>,
}

impl Schemas {
    /// Schemas over the reflector's held pools and its routes' backends.
    pub fn new(reflector: Arc<Reflector>) -> Self {
        Self { reflector, learned: Mutex::default() }
    }

    /// The method a path (`/pkg.Service/Method`) names, from a schema the sidecar holds.
    pub fn held(&self, path: &str) -> Option<MethodDescriptor> {
        let (service, method) = split(path)?;
        self.reflector.pools().iter().find_map(|p| find(p, service, method))
    }

    /// The method a path names on `balancer`'s target, learned through reflection (cached), or why it is not
    /// known: the backends serve no reflection, do not know the method, or could not be reached.
    pub async fn learned(&self, balancer: &Balancer, path: &str) -> Result<MethodDescriptor, String> {
        let (service, method) = split(path).ok_or_else(|| format!("{path} is not /package.Service/Method"))?;
        let target = balancer.target();
        let cached = match self.learned.lock().get(target) {
            Some(Cached::Pool(pool)) => Ok(pool.clone()),
            Some(Cached::Failed { until, why }) if Instant::now() < *until => return Err(why.clone()),
            _ => Err(()),
        };
        if let Ok(pool) = &cached
            && let Some(m) = find(pool, service, method)
        {
            return Ok(m);
        }
        // Not cached, or the method is missing from what is: look the service up (again).
        let mut pool = cached.unwrap_or_default();
        let fetched = fetch(&self.reflector, balancer, service)
            .await
            .and_then(|files| pool.add_file_descriptor_protos(files).map_err(|e| format!("invalid schema: {e}")));
        let mut learned = self.learned.lock();
        if let Err(why) = fetched {
            let why = format!("reflection at {target}: {why}");
            learned.insert(target.to_owned(), Cached::Failed { until: Instant::now() + RETRY_AFTER, why: why.clone() });
            return Err(why);
        }
        learned.insert(target.to_owned(), Cached::Pool(pool.clone()));
        find(&pool, service, method).ok_or_else(|| format!("the backends of {target} do not define {path}"))
    }

    /// Forgets `balancer`'s learned schema, so the next call learns it again (a message did not map: the backend
    /// may run a newer build).
    pub fn refresh(&self, balancer: &Balancer) {
        self.learned.lock().remove(balancer.target());
    }
}

fn split(path: &str) -> Option<(&str, &str)> {
    path.strip_prefix('/')?.split_once('/')
}

fn find(pool: &DescriptorPool, service: &str, method: &str) -> Option<MethodDescriptor> {
    pool.get_service_by_name(service)?.methods().find(|m| m.name() == method)
}

/// The file defining `service` and every file it depends on, from one endpoint of the target.
async fn fetch(reflector: &Reflector, balancer: &Balancer, service: &str) -> Result<Vec<FileDescriptorProto>, String> {
    let mut pinned = Pinned::default();
    let mut files: Vec<FileDescriptorProto> = Vec::new();
    let mut wanted = vec![MessageRequest::FileContainingSymbol(service.to_owned())];
    let mut asked = 0;
    while let Some(request) = wanted.pop() {
        asked += 1;
        if asked > MAX_FILES {
            return Err(format!("{service} needs more than {MAX_FILES} files"));
        }
        let req = ServerReflectionRequest { host: String::new(), message_request: Some(request) };
        let res = reflector.ask(balancer, &mut pinned, Version::V1, &req).await.map_err(|s| s.message().to_owned())?;
        let got = match res.message_response {
            Some(MessageResponse::FileDescriptorResponse(f)) => f.file_descriptor_proto,
            Some(MessageResponse::ErrorResponse(e)) => return Err(e.error_message),
            _ => return Err("unexpected answer".into()),
        };
        for raw in got {
            let file = FileDescriptorProto::decode(raw.as_slice()).map_err(|e| format!("invalid file: {e}"))?;
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
