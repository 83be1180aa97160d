//! `grpc.health.v1.Health` for routed services (DESIGN §10): `Check("acme.orders.v1.OrderService")` answers
//! SERVING while that service's target has a usable endpoint and NOT_SERVING while it has none; the empty name
//! (the whole sidecar) is SERVING only while every target has one. A service with no route of its own is unknown
//! to the reporter: `Check` answers NOT_FOUND and `Watch` sends SERVICE_UNKNOWN and stays open, as health.proto
//! says ([`Service`]).

use std::{collections::HashMap, pin::Pin, sync::Arc};

use tokio_stream::{Stream, StreamExt};
use tonic::{Code, Request, Response, Status};
use tonic_health::{
    ServingStatus,
    pb::{
        HealthCheckRequest, HealthCheckResponse,
        health_check_response::ServingStatus as Wire,
        health_server::{Health, HealthServer},
    },
    server::{HealthReporter, HealthService},
};

/// `grpc.health.v1.Health` over `reporter`'s statuses: tonic-health's service, except that `Watch` of an unknown
/// service sends SERVICE_UNKNOWN and keeps the stream open (grpc health.proto: "will *not* terminate the call";
/// tonic-health ends it with NOT_FOUND, which a grpc-go client retries with backoff forever).
pub(super) fn service(reporter: &HealthReporter) -> HealthServer<Service> {
    HealthServer::new(Service(HealthService::from_health_reporter(reporter.clone())))
}

/// See [`service`].
pub(super) struct Service(HealthService);

#[tonic::async_trait]
impl Health for Service {
    async fn check(&self, request: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
        self.0.check(request).await
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

    async fn watch(&self, request: Request<HealthCheckRequest>) -> Result<Response<Self::WatchStream>, Status> {
        match self.0.watch(request).await {
            Ok(res) => Ok(res.map(|s| Box::pin(s) as Self::WatchStream)),
            Err(s) if s.code() == Code::NotFound => {
                // Routes are fixed at start, so an unknown service stays unknown: one message, then silence.
                let unknown = HealthCheckResponse { status: Wire::ServiceUnknown as i32 };
                let stream = tokio_stream::once(Ok(unknown)).chain(tokio_stream::pending());
                Ok(Response::new(Box::pin(stream)))
            }
            Err(s) => Err(s),
        }
    }
}

use super::SidecarState;
use crate::routes::ServiceMatch;

/// Sets every routed service's status now, then follows each target's balancer as endpoints come and go.
pub(super) async fn spawn(reporter: HealthReporter, state: Arc<SidecarState>) {
    let mut last = HashMap::new();
    update(&reporter, &state, &mut last).await;
    let mut changes: Vec<_> = state.targets.iter().map(|t| t.balancer.subscribe()).collect();
    tokio::spawn(async move {
        loop {
            let any = futures_util::future::select_all(changes.iter_mut().map(|c| Box::pin(c.changed()))).await;
            if any.0.is_err() {
                return;
            }
            update(&reporter, &state, &mut last).await;
        }
    });
}

fn status(serving: bool) -> ServingStatus {
    if serving { ServingStatus::Serving } else { ServingStatus::NotServing }
}

/// Sets the statuses that changed since `last` (a Watch stream sees each change once).
async fn update(reporter: &HealthReporter, state: &SidecarState, last: &mut HashMap<String, ServingStatus>) {
    let mut now: Vec<(&str, ServingStatus)> = state
        .routes
        .iter()
        .filter_map(|(service, target)| match service {
            ServiceMatch::Exact(name) => Some((name.as_str(), status(state.targets[*target].serving()))),
            ServiceMatch::Any => None,
        })
        .collect();
    now.push(("", status(state.targets.iter().all(|t| t.serving()))));
    for (name, s) in now {
        if last.get(name) != Some(&s) {
            reporter.set_service_status(name, s).await;
            last.insert(name.to_owned(), s);
        }
    }
}
