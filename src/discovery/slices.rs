//! EndpointSlice rules, as kube-proxy applies them: pure functions, no I/O.
//!
//! - Every slice of the Service is merged; endpoints are deduplicated by (address, port).
//! - The port is resolved per slice: a named port may map to different numbers in different slices (pods of a
//!   rollout may differ). A number is used as the endpoint port as it is.
//! - Usable set (KEP-1669): ready && !terminating; if there is none, serving && terminating, so a Service whose
//!   pods are all shutting down still answers while they drain; never terminating && !serving.
//! - Nil conditions follow the API's documented meaning: ready nil → ready, serving nil → same as ready,
//!   terminating nil → not terminating.
//! - `addressType` IPv4 and IPv6; FQDN slices are skipped with a warning.
//! - One entry per **pod**, not per address: an endpoint's `addresses` are interchangeable, so only the first is
//!   used (as kube-proxy does), and a dual-stack Service's IPv4 and IPv6 slices list the same pods, grouped here by
//!   `targetRef` (endpoints without one stand for themselves). Which family a pod is called on is
//!   [`IpFamily`]'s choice; the pod's other addresses are kept for `/debug/endpoints`.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
};

use k8s_openapi::api::discovery::v1::EndpointSlice;
use tracing::warn;

use super::{Discovered, PortRef};

/// Which address family a pod with addresses in both is called on (`--ip-family`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum IpFamily {
    /// IPv4 when the pod has an IPv4 address, else IPv6.
    #[default]
    Auto,
    /// IPv4 only: pods without an IPv4 address are not used.
    Ipv4,
    /// IPv6 only: pods without an IPv6 address are not used.
    Ipv6,
}

impl IpFamily {
    fn admits(self, addr: &SocketAddr) -> bool {
        match self {
            IpFamily::Auto => true,
            IpFamily::Ipv4 => addr.is_ipv4(),
            IpFamily::Ipv6 => addr.is_ipv6(),
        }
    }
}

/// One endpoint of one slice (its first address), with its conditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceEndpoint {
    /// Address and resolved port.
    pub addr: SocketAddr,
    /// The pod (`targetRef.name`).
    pub pod: Option<String>,
    /// `conditions.ready`.
    pub ready: bool,
    /// `conditions.serving`.
    pub serving: bool,
    /// `conditions.terminating`.
    pub terminating: bool,
}

/// The endpoints of one slice for `port`. Unusable slices (FQDN, port missing) give none.
pub fn endpoints_of(slice: &EndpointSlice, port: &PortRef) -> Vec<SliceEndpoint> {
    let name = slice.metadata.name.as_deref().unwrap_or("<unnamed>");
    if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
        warn!(slice = name, address_type = %slice.address_type, "skipping EndpointSlice: only IPv4 and IPv6 are supported");
        return Vec::new();
    }
    let number = match port {
        PortRef::Number(n) => *n,
        PortRef::Name(want) => {
            let found = slice.ports.iter().flatten().find(|p| p.name.as_deref() == Some(want.as_str()));
            match found.and_then(|p| p.port).and_then(|p| u16::try_from(p).ok()).filter(|p| *p != 0) {
                Some(n) => n,
                None => {
                    if !slice.endpoints.as_ref().is_none_or(Vec::is_empty) {
                        warn!(slice = name, port = %want, "EndpointSlice has no port of that name; skipping it");
                    }
                    return Vec::new();
                }
            }
        }
    };
    let mut out = Vec::new();
    for ep in slice.endpoints.iter().flatten() {
        let c = ep.conditions.as_ref();
        let ready = c.and_then(|c| c.ready).unwrap_or(true);
        let serving = c.and_then(|c| c.serving).unwrap_or(ready);
        let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
        let pod = ep.target_ref.as_ref().and_then(|r| r.name.clone());
        // The addresses of one endpoint are interchangeable: use the first, as kube-proxy does.
        let Some(address) = ep.addresses.first() else { continue };
        match address.parse::<IpAddr>() {
            Ok(ip) => out.push(SliceEndpoint { addr: SocketAddr::new(ip, number), pod, ready, serving, terminating }),
            Err(_) => warn!(slice = name, %address, "skipping an address that is not an IP"),
        }
    }
    out
}

/// The port names `slice` has when it has endpoints but no port named as `port` asks (`None` otherwise): the
/// evidence that a target's port name is not the Service's.
pub fn lacks_port(slice: &EndpointSlice, port: &PortRef) -> Option<Vec<String>> {
    let PortRef::Name(want) = port else { return None };
    let ports = slice.ports.iter().flatten();
    let has_endpoints = !slice.endpoints.as_ref().is_none_or(Vec::is_empty);
    let named = ports.clone().any(|p| p.name.as_deref() == Some(want.as_str()));
    (has_endpoints && !named).then(|| ports.map(|p| p.name.clone().unwrap_or_else(|| "(unnamed)".into())).collect())
}

/// The usable endpoints of all slices: one per pod, on the family `family` chooses, sorted by address.
pub fn usable(slices: &BTreeMap<String, Vec<SliceEndpoint>>, family: IpFamily) -> Vec<Discovered> {
    // Per address, the best view any slice has of it (during a move between slices both may list it).
    let mut best: HashMap<SocketAddr, &SliceEndpoint> = HashMap::new();
    for e in slices.values().flatten() {
        let keep = best.get(&e.addr).is_none_or(|old| rank(e) > rank(old));
        if keep {
            best.insert(e.addr, e);
        }
    }
    // Per pod, its addresses (a dual-stack pod has one per family); an endpoint without a targetRef is its own.
    let mut pods: BTreeMap<String, Vec<&SliceEndpoint>> = BTreeMap::new();
    for e in best.values() {
        let key = e.pod.as_ref().map_or_else(|| format!("addr/{}", e.addr), |p| format!("pod/{p}"));
        pods.entry(key).or_default().push(e);
    }
    let mut chosen: Vec<(&SliceEndpoint, Vec<SocketAddr>)> = Vec::with_capacity(pods.len());
    for mut entries in pods.into_values() {
        // Best conditions first, then IPv4 before IPv6 (auto), then the lower address.
        entries.sort_by_key(|e| (std::cmp::Reverse(rank(e)), e.addr.is_ipv6(), e.addr));
        let Some(pick) = entries.iter().find(|e| family.admits(&e.addr)) else { continue };
        let mut addresses: Vec<SocketAddr> = entries.iter().map(|e| e.addr).collect();
        addresses.sort_by_key(|a| (*a != pick.addr, a.is_ipv6(), *a));
        chosen.push((pick, addresses));
    }
    let discovered = |(e, addresses): &(&SliceEndpoint, Vec<SocketAddr>), terminating| Discovered {
        addr: e.addr,
        pod: e.pod.clone(),
        terminating,
        addresses: addresses.clone(),
    };
    let ready: Vec<Discovered> =
        chosen.iter().filter(|(e, _)| e.ready && !e.terminating).map(|c| discovered(c, false)).collect();
    let mut set = if ready.is_empty() {
        chosen.iter().filter(|(e, _)| e.serving && e.terminating).map(|c| discovered(c, true)).collect()
    } else {
        ready
    };
    set.sort_by_key(|d| d.addr);
    set
}

/// How usable an endpoint's conditions make it: ready 2, serving while terminating 1, else 0.
fn rank(e: &SliceEndpoint) -> u8 {
    match (e.ready && !e.terminating, e.serving) {
        (true, _) => 2,
        (false, true) => 1,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::{
            core::v1::ObjectReference,
            discovery::v1::{Endpoint, EndpointConditions, EndpointPort},
        },
        apimachinery::pkg::apis::meta::v1::ObjectMeta,
    };

    use super::*;

    type Cond = (Option<bool>, Option<bool>, Option<bool>);
    const READY: Cond = (Some(true), Some(true), Some(false));
    const TERMINATING_SERVING: Cond = (Some(false), Some(true), Some(true));
    const TERMINATING_GONE: Cond = (Some(false), Some(false), Some(true));
    const NOT_READY: Cond = (Some(false), Some(false), Some(false));

    fn slice(name: &str, kind: &str, ports: &[(&str, i32)], eps: &[(&str, Cond)]) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
            address_type: kind.into(),
            ports: Some(
                ports
                    .iter()
                    .map(|(n, p)| EndpointPort { name: Some((*n).into()), port: Some(*p), ..Default::default() })
                    .collect(),
            ),
            endpoints: Some(
                eps.iter()
                    .map(|(a, (ready, serving, terminating))| Endpoint {
                        addresses: vec![(*a).into()],
                        conditions: Some(EndpointConditions {
                            ready: *ready,
                            serving: *serving,
                            terminating: *terminating,
                        }),
                        target_ref: Some(ObjectReference { name: Some(format!("pod-{a}")), ..Default::default() }),
                        ..Default::default()
                    })
                    .collect(),
            ),
        }
    }

    fn merge(slices: &[EndpointSlice], port: &PortRef) -> Vec<String> {
        let map: BTreeMap<String, Vec<SliceEndpoint>> =
            slices.iter().map(|s| (s.metadata.name.clone().unwrap_or_default(), endpoints_of(s, port))).collect();
        usable(&map, IpFamily::Auto).into_iter().map(|d| d.addr.to_string()).collect()
    }

    fn grpc() -> PortRef {
        PortRef::Name("grpc".into())
    }

    #[test]
    fn duplicates_across_slices_count_once() {
        let a = slice("a", "IPv4", &[("grpc", 8080)], &[("10.0.0.1", READY), ("10.0.0.2", READY)]);
        let b = slice("b", "IPv4", &[("grpc", 8080)], &[("10.0.0.2", READY), ("10.0.0.3", READY)]);
        assert_eq!(merge(&[a, b], &grpc()), ["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"]);
    }

    #[test]
    fn a_deleted_or_emptied_slice_takes_its_endpoints_away() {
        let a = slice("a", "IPv4", &[("grpc", 8080)], &[("10.0.0.1", READY)]);
        let b = slice("b", "IPv4", &[("grpc", 8080)], &[("10.0.0.2", READY)]);
        assert_eq!(merge(&[a.clone(), b], &grpc()), ["10.0.0.1:8080", "10.0.0.2:8080"]);
        // b deleted:
        assert_eq!(merge(std::slice::from_ref(&a), &grpc()), ["10.0.0.1:8080"]);
        // b emptied:
        let emptied = slice("b", "IPv4", &[("grpc", 8080)], &[]);
        assert_eq!(merge(&[a, emptied], &grpc()), ["10.0.0.1:8080"]);
        assert!(merge(&[], &grpc()).is_empty());
    }

    #[test]
    fn conditions_follow_kep_1669() {
        let s = |eps: &[(&str, Cond)]| slice("s", "IPv4", &[("grpc", 1)], eps);
        // Ready ones win; terminating ones are not used while any is ready.
        assert_eq!(merge(&[s(&[("10.0.0.1", READY), ("10.0.0.2", TERMINATING_SERVING)])], &grpc()), ["10.0.0.1:1"]);
        // None ready: the serving terminating ones carry the traffic.
        let all_going =
            s(&[("10.0.0.2", TERMINATING_SERVING), ("10.0.0.3", TERMINATING_GONE), ("10.0.0.4", NOT_READY)]);
        let set = merge(&[all_going], &grpc());
        assert_eq!(set, ["10.0.0.2:1"]);
        // Never terminating && !serving, never not-ready.
        assert!(merge(&[s(&[("10.0.0.3", TERMINATING_GONE), ("10.0.0.4", NOT_READY)])], &grpc()).is_empty());
        // Nil conditions: ready, serving, not terminating.
        assert_eq!(merge(&[s(&[("10.0.0.5", (None, None, None))])], &grpc()), ["10.0.0.5:1"]);
        // ready=false with serving nil defers to ready: not usable.
        assert!(merge(&[s(&[("10.0.0.6", (Some(false), None, None))])], &grpc()).is_empty());
        // terminating nil with ready=true is ready.
        assert_eq!(merge(&[s(&[("10.0.0.7", (Some(true), None, None))])], &grpc()), ["10.0.0.7:1"]);
    }

    #[test]
    fn terminating_flag_marks_the_fallback_set() {
        let s = slice("s", "IPv4", &[("grpc", 1)], &[("10.0.0.2", TERMINATING_SERVING)]);
        let map = BTreeMap::from([("s".to_owned(), endpoints_of(&s, &grpc()))]);
        let set = usable(&map, IpFamily::Auto);
        assert!(set[0].terminating);
        assert_eq!(set[0].pod.as_deref(), Some("pod-10.0.0.2"));
    }

    #[test]
    fn a_named_port_resolves_per_slice() {
        let old = slice("old", "IPv4", &[("grpc", 8080)], &[("10.0.0.1", READY)]);
        let new = slice("new", "IPv4", &[("grpc", 9090), ("metrics", 9100)], &[("10.0.0.2", READY)]);
        let other = slice("other", "IPv4", &[("http", 80)], &[("10.0.0.3", READY)]);
        assert_eq!(merge(&[old.clone(), new.clone(), other], &grpc()), ["10.0.0.1:8080", "10.0.0.2:9090"]);
        assert_eq!(merge(&[old, new], &PortRef::Number(7000)), ["10.0.0.1:7000", "10.0.0.2:7000"]);
    }

    #[test]
    fn two_hundred_fifty_endpoints_over_three_slices() {
        let ips: Vec<String> = (0..250).map(|i| format!("10.1.{}.{}", i / 200, i % 200 + 1)).collect();
        let eps: Vec<(&str, Cond)> = ips.iter().map(|ip| (ip.as_str(), READY)).collect();
        // Overlapping ranges: 0..100, 90..200, 190..250.
        let slices = [
            slice("s1", "IPv4", &[("grpc", 8080)], &eps[0..100]),
            slice("s2", "IPv4", &[("grpc", 8080)], &eps[90..200]),
            slice("s3", "IPv4", &[("grpc", 8080)], &eps[190..250]),
        ];
        assert_eq!(merge(&slices, &grpc()).len(), 250);
    }

    #[test]
    fn ipv6_is_bracketed_and_fqdn_is_skipped() {
        let v4 = slice("v4", "IPv4", &[("grpc", 8080)], &[("10.0.0.1", READY)]);
        let v6 = slice("v6", "IPv6", &[("grpc", 8080)], &[("fd00::1", READY)]);
        let fqdn = slice("fqdn", "FQDN", &[("grpc", 8080)], &[("hello.example.com", READY)]);
        assert_eq!(merge(&[v4, v6, fqdn], &grpc()), ["10.0.0.1:8080", "[fd00::1]:8080"]);
    }

    fn dual_stack() -> Vec<EndpointSlice> {
        let mut v6 = slice("v6", "IPv6", &[("grpc", 8080)], &[("fd00::1", READY), ("fd00::2", READY)]);
        // The same two pods as the IPv4 slice: the targetRef says so.
        for (ep, pod) in v6.endpoints.iter_mut().flatten().zip(["pod-10.0.0.1", "pod-10.0.0.2"]) {
            ep.target_ref = Some(ObjectReference { name: Some(pod.into()), ..Default::default() });
        }
        let v4 =
            slice("v4", "IPv4", &[("grpc", 8080)], &[("10.0.0.1", READY), ("10.0.0.2", READY), ("10.0.0.3", READY)]);
        vec![v4, v6]
    }

    fn merged(slices: &[EndpointSlice], family: IpFamily) -> Vec<Discovered> {
        let map: BTreeMap<String, Vec<SliceEndpoint>> =
            slices.iter().map(|s| (s.metadata.name.clone().unwrap_or_default(), endpoints_of(s, &grpc()))).collect();
        usable(&map, family)
    }

    #[test]
    fn a_dual_stack_pod_is_one_endpoint_with_both_addresses() {
        let set = merged(&dual_stack(), IpFamily::Auto);
        let addrs: Vec<String> = set.iter().map(|d| d.addr.to_string()).collect();
        assert_eq!(addrs, ["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"], "three pods, three endpoints");
        let all: Vec<String> = set[0].addresses.iter().map(ToString::to_string).collect();
        assert_eq!(all, ["10.0.0.1:8080", "[fd00::1]:8080"]);
        assert_eq!(set[2].addresses.len(), 1);
    }

    #[test]
    fn ip_family_picks_the_address_or_leaves_the_pod_out() {
        let v6: Vec<String> = merged(&dual_stack(), IpFamily::Ipv6).iter().map(|d| d.addr.to_string()).collect();
        assert_eq!(v6, ["[fd00::1]:8080", "[fd00::2]:8080"], "the IPv4-only pod has no IPv6 address");
        assert_eq!(merged(&dual_stack(), IpFamily::Ipv4).len(), 3);
    }

    #[test]
    fn only_the_first_address_of_an_endpoint_is_used() {
        let mut s = slice("s", "IPv4", &[("grpc", 8080)], &[("10.0.0.1", READY)]);
        if let Some(ep) = s.endpoints.as_mut().and_then(|e| e.first_mut()) {
            ep.addresses.push("10.0.0.9".into());
        }
        assert_eq!(merge(&[s], &grpc()), ["10.0.0.1:8080"]);
    }
}
