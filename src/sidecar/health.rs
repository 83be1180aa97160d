//! `grpc.health.v1.Health` for routed services (DESIGN §10): `Check("acme.orders.v1.OrderService")` answers
//! SERVING while that service's target has a usable endpoint and NOT_SERVING while it has none; the empty name
//! (the whole sidecar) is SERVING only while every target has one. A service with no route of its own is unknown
//! to the reporter, so gRPC health answers NOT_FOUND (and `Watch` SERVICE_UNKNOWN), as the protocol says.

use std::{collections::HashMap, sync::Arc};

use tonic_health::{ServingStatus, server::HealthReporter};

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
