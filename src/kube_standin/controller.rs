//! A small EndpointSlice controller: publishes pods as the real one does — at most 100 endpoints per slice,
//! conditions from each pod's phase, the `kubernetes.io/service-name` label, a named port — and deletes slices
//! that are no longer needed.

use std::{collections::BTreeMap, net::IpAddr};

use k8s_openapi::{
    api::{
        core::v1::ObjectReference,
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use super::StandIn;
use crate::discovery::kubernetes::SERVICE_NAME_LABEL;

/// Endpoints per slice, as the real controller's default `--max-endpoints-per-slice`.
pub const MAX_PER_SLICE: usize = 100;

/// Where a pod is in its life, as the EndpointSlice conditions say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Created, not ready yet (ready=false, serving=false).
    Starting,
    /// Ready (ready=true, serving=true).
    Ready,
    /// Failing its readiness probe (ready=false, serving=false).
    NotReady,
    /// Deleted and draining (ready=false, serving=true, terminating=true).
    Terminating,
}

/// A pod as the controller sees it.
#[derive(Debug, Clone)]
pub struct Pod {
    /// Pod name (`targetRef.name`).
    pub name: String,
    /// Pod IP.
    pub ip: IpAddr,
    /// Its phase.
    pub phase: Phase,
}

/// Publishes one Service's pods as EndpointSlices.
pub struct Controller {
    service: String,
    namespace: String,
    port_name: String,
    port: u16,
    published: usize,
}

impl Controller {
    /// A controller for `service` in `namespace`, port `port_name` = `port`.
    pub fn new(service: &str, namespace: &str, port_name: &str, port: u16) -> Self {
        Self { service: service.into(), namespace: namespace.into(), port_name: port_name.into(), port, published: 0 }
    }

    /// Writes the slices for `pods` and deletes the ones left over.
    pub fn publish(&mut self, api: &StandIn, pods: &[Pod]) {
        let slices = self.slices(pods);
        for s in &slices {
            api.put_slice(s);
        }
        for i in slices.len()..self.published {
            api.delete_slice(&self.namespace, &self.slice_name(i));
        }
        self.published = slices.len();
    }

    /// The slices for `pods` (always at least one, possibly empty, as the real controller keeps).
    pub fn slices(&self, pods: &[Pod]) -> Vec<EndpointSlice> {
        let mut by_family: BTreeMap<&str, Vec<&Pod>> = BTreeMap::new();
        for p in pods {
            by_family.entry(if p.ip.is_ipv4() { "IPv4" } else { "IPv6" }).or_default().push(p);
        }
        if by_family.is_empty() {
            by_family.insert("IPv4", Vec::new());
        }
        let mut out = Vec::new();
        for (family, pods) in by_family {
            let chunks: Vec<&[&Pod]> = if pods.is_empty() { vec![&[]] } else { pods.chunks(MAX_PER_SLICE).collect() };
            for chunk in chunks {
                out.push(self.slice(out.len(), family, chunk));
            }
        }
        out
    }

    fn slice_name(&self, i: usize) -> String {
        format!("{}-{i}", self.service)
    }

    fn slice(&self, i: usize, family: &str, pods: &[&Pod]) -> EndpointSlice {
        let endpoints = pods
            .iter()
            .map(|p| {
                let (ready, serving, terminating) = match p.phase {
                    Phase::Starting | Phase::NotReady => (false, false, false),
                    Phase::Ready => (true, true, false),
                    Phase::Terminating => (false, true, true),
                };
                Endpoint {
                    addresses: vec![p.ip.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: Some(ready),
                        serving: Some(serving),
                        terminating: Some(terminating),
                    }),
                    target_ref: Some(ObjectReference {
                        kind: Some("Pod".into()),
                        name: Some(p.name.clone()),
                        namespace: Some(self.namespace.clone()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }
            })
            .collect();
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(self.slice_name(i)),
                namespace: Some(self.namespace.clone()),
                labels: Some(BTreeMap::from([
                    (SERVICE_NAME_LABEL.to_owned(), self.service.clone()),
                    ("endpointslice.kubernetes.io/managed-by".to_owned(), "endpointslice-controller.k8s.io".to_owned()),
                ])),
                ..Default::default()
            },
            address_type: family.into(),
            ports: Some(vec![EndpointPort {
                name: Some(self.port_name.clone()),
                port: Some(i32::from(self.port)),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            endpoints: Some(endpoints),
        }
    }
}
