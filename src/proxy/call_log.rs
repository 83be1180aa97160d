//! What the access log needs of one call beyond its method, status and duration, gathered as the call goes
//! and handed to [`crate::telemetry::access_log`] when it ends.

use std::sync::Arc;

use tokio::time::Instant;
use tonic::Code;

use crate::{
    proxy::{UpstreamRequestBody, replay::Tally},
    telemetry::{
        access_log::{Entry, Peer},
        metrics::Metrics,
    },
};

/// An endpoint of the proxy's balancers.
type Endpoint = crate::balance::Endpoint<UpstreamRequestBody>;

/// What the access log needs of a call beyond its method, status and duration. Filled only while the access log
/// is on (`on`); otherwise it stays empty and costs nothing.
#[derive(Default)]
pub struct CallLog {
    /// The access log is on.
    pub on: bool,
    /// The endpoint of the latest attempt.
    pub endpoint: Option<Arc<Endpoint>>,
    /// Attempts after the first.
    pub retries: u32,
    /// The request bytes read from the caller.
    pub request: Option<Tally>,
    /// Response body bytes passed to the caller.
    pub response_bytes: u64,
}

impl CallLog {
    /// An empty log for one call; `on` when `metrics` has an access log.
    pub fn new(metrics: &Metrics) -> Self {
        Self { on: metrics.access_log().is_some(), ..Self::default() }
    }

    /// Notes the endpoint of attempt number `attempt` (0 for the first).
    pub fn attempt(&mut self, endpoint: &Arc<Endpoint>, attempt: u32) {
        if self.on {
            self.endpoint = Some(endpoint.clone());
            self.retries = attempt;
        }
    }

    /// Notes the endpoint that answered, unless an attempt was noted already.
    pub fn answered_by(&mut self, endpoint: &Arc<Endpoint>) {
        if self.on && self.endpoint.is_none() {
            self.endpoint = Some(endpoint.clone());
        }
    }

    /// Writes the call's line (once), if the access log is on.
    pub fn finish(&mut self, metrics: &Metrics, method: &Arc<str>, code: Code, start: Instant) {
        if !std::mem::take(&mut self.on) {
            return;
        }
        let Some(log) = metrics.access_log() else { return };
        log.record(Entry {
            at: std::time::SystemTime::now(),
            method: method.clone(),
            peer: self.endpoint.take().map(|e| e as Arc<dyn Peer>),
            code,
            duration: start.elapsed(),
            retries: self.retries,
            request_bytes: self.request.take().map_or(0, |t| t.bytes()),
            response_bytes: self.response_bytes,
        });
    }
}
