//! The EndpointSlices of one Service as the kube watcher reports them, with a re-list buffered until complete.
//!
//! A re-list (`Init … InitApply … InitDone`) is kept aside and swapped in whole at `InitDone`: slices absent from
//! the new list are gone, and nothing is removed half-way (a half-done re-list would drop the pods not listed yet).

use std::collections::BTreeMap;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::Event;

use super::{
    PortRef,
    slices::{SliceEndpoint, endpoints_of},
};

/// The endpoints of each slice, by slice name.
pub(super) type Slices = BTreeMap<String, Vec<SliceEndpoint>>;

/// What each slice lists whatever the port, by slice name: enough to say why a port has no endpoint.
type Outlines = BTreeMap<String, Outline>;

/// One slice's endpoint count and ports (name, `""` for an unnamed one, and number).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outline {
    endpoints: usize,
    ports: Vec<(String, Option<i32>)>,
}

impl Outline {
    fn of(s: &EndpointSlice) -> Self {
        let ports = s.ports.iter().flatten().map(|p| (p.name.clone().unwrap_or_default(), p.port)).collect();
        Self { endpoints: s.endpoints.as_ref().map_or(0, Vec::len), ports }
    }
}

/// The current slices and the re-list under way, if any.
#[derive(Default)]
pub(super) struct SliceState {
    current: Slices,
    outlines: Outlines,
    relist: Option<(Slices, Outlines)>,
}

impl SliceState {
    /// The slices as of the last event that changed them.
    pub(super) fn current(&self) -> &Slices {
        &self.current
    }

    /// Why `port` has no usable endpoint in the current slices, in words for the operator and the caller (the
    /// usable set is empty): no slice at all (a misspelt Service or namespace: the API lists nothing, it does not
    /// answer 404), no endpoint in any slice (scaled to zero), no port of that name, or none of them ready.
    pub(super) fn why_empty(&self, port: &PortRef) -> String {
        if self.outlines.is_empty() {
            return "the Service has no EndpointSlices (check the Service's name and namespace, and that it has a \
                    selector)"
                .into();
        }
        let listed: Vec<&Outline> = self.outlines.values().filter(|o| o.endpoints > 0).collect();
        if listed.is_empty() {
            return "the Service has no endpoints (no pod matches its selector)".into();
        }
        if let PortRef::Name(want) = port
            && !listed.iter().any(|o| o.ports.iter().any(|(name, _)| name == want))
        {
            let mut names: Vec<&str> = listed.iter().flat_map(|o| o.ports.iter().map(|(n, _)| n.as_str())).collect();
            names.sort_unstable();
            names.dedup();
            let names: Vec<String> =
                names.iter().map(|n| if n.is_empty() { "(unnamed)".to_owned() } else { (*n).to_owned() }).collect();
            if names.is_empty() {
                return format!("no port of the Service is named {want:?} (its EndpointSlices list no ports)");
            }
            return format!("no port of the Service is named {want:?} (its ports: {})", names.join(", "));
        }
        if let Some(hint) = self.port_hint(port) {
            return hint;
        }
        let known: usize = self.current.values().map(Vec::len).sum();
        let ready = self.current.values().flatten().filter(|e| e.ready || e.serving).count();
        if known == 0 {
            // The slices list endpoints, none of them callable on this port: not a readiness matter.
            format!(
                "its EndpointSlices list no endpoint with an IP address and a number for port {port} (FQDN slices \
                 are not supported)"
            )
        } else if ready == 0 {
            format!("none of its {known} endpoints is ready")
        } else {
            format!("none of its {ready} ready endpoints has an address of the family --ip-family asks for")
        }
    }

    /// For a port given by number that no slice with endpoints lists, the mix-up it likely is: the number is used
    /// as the pod's port (the EndpointSlice's), and a Service port that maps elsewhere (80 → 8080) is refused on
    /// every pod. `None` when some slice has that port or one without a number (the EndpointSlice API: "ports are
    /// not restricted"), or when the slices list no port at all.
    pub(super) fn port_hint(&self, port: &PortRef) -> Option<String> {
        let PortRef::Number(n) = port else { return None };
        let mut ports: Vec<String> = Vec::new();
        for o in self.outlines.values().filter(|o| o.endpoints > 0) {
            for (name, number) in &o.ports {
                let Some(number) = number else { return None };
                if *number == i32::from(*n) {
                    return None;
                }
                ports.push(if name.is_empty() { number.to_string() } else { format!("{name}={number}") });
            }
        }
        if ports.is_empty() {
            return None;
        }
        ports.sort_unstable();
        ports.dedup();
        Some(format!(
            "no port of the Service is {n} (its ports: {}); a port number in the target is the pod's port, not the \
             Service's: use the port's name or the pod's number",
            ports.join(", ")
        ))
    }

    /// Applies one watcher event; returns whether the current slices may have changed (during a re-list they
    /// change only at `InitDone`).
    pub(super) fn apply(&mut self, event: Event<EndpointSlice>, port: &PortRef) -> bool {
        match event {
            // `Init` comes before the LIST request: it says nothing about whether the API answers.
            Event::Init => {
                self.relist = Some(Default::default());
                false
            }
            Event::InitApply(s) => {
                if let Some((buffer, outlines)) = self.relist.as_mut() {
                    buffer.insert(name_of(&s), endpoints_of(&s, port));
                    outlines.insert(name_of(&s), Outline::of(&s));
                }
                false
            }
            Event::InitDone => {
                (self.current, self.outlines) = self.relist.take().unwrap_or_default();
                true
            }
            Event::Apply(s) => {
                self.current.insert(name_of(&s), endpoints_of(&s, port));
                self.outlines.insert(name_of(&s), Outline::of(&s));
                true
            }
            Event::Delete(s) => {
                self.current.remove(&name_of(&s));
                self.outlines.remove(&name_of(&s));
                true
            }
        }
    }
}

fn name_of(s: &EndpointSlice) -> String {
    s.metadata.name.clone().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort},
        apimachinery::pkg::apis::meta::v1::ObjectMeta,
    };

    use super::*;

    const PORT: u16 = 8080;

    fn slice(name: &str, ips: &[&str]) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
            address_type: "IPv4".into(),
            ports: Some(vec![EndpointPort { port: Some(i32::from(PORT)), ..Default::default() }]),
            endpoints: Some(
                ips.iter()
                    .map(|ip| Endpoint {
                        addresses: vec![(*ip).into()],
                        conditions: Some(EndpointConditions { ready: Some(true), ..Default::default() }),
                        ..Default::default()
                    })
                    .collect(),
            ),
        }
    }

    /// Slice name → its addresses, for assertions.
    fn view(state: &SliceState) -> Vec<(String, Vec<String>)> {
        state
            .current()
            .iter()
            .map(|(name, eps)| (name.clone(), eps.iter().map(|e| e.addr.to_string()).collect()))
            .collect()
    }

    fn owned(v: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
        v.iter().map(|(n, a)| ((*n).to_owned(), a.iter().map(|s| format!("{s}:{PORT}")).collect())).collect()
    }

    #[test]
    fn a_relist_is_buffered_and_swapped_in_whole_at_init_done() {
        let port = PortRef::Number(PORT);
        let mut s = SliceState::default();
        assert!(s.apply(Event::Apply(slice("a", &["10.0.0.1"])), &port));
        assert!(s.apply(Event::Apply(slice("b", &["10.0.0.2"])), &port));
        assert!(!s.apply(Event::Init, &port));
        assert!(!s.apply(Event::InitApply(slice("b", &["10.0.0.3"])), &port));
        assert_eq!(view(&s), owned(&[("a", &["10.0.0.1"]), ("b", &["10.0.0.2"])]), "unchanged until InitDone");
        assert!(s.apply(Event::InitDone, &port));
        assert_eq!(view(&s), owned(&[("b", &["10.0.0.3"])]), "slice a was not in the re-list: gone");
    }

    #[test]
    fn an_empty_relist_empties_the_set() {
        let port = PortRef::Number(PORT);
        let mut s = SliceState::default();
        s.apply(Event::Apply(slice("a", &["10.0.0.1"])), &port);
        s.apply(Event::Init, &port);
        assert_eq!(view(&s).len(), 1);
        assert!(s.apply(Event::InitDone, &port));
        assert!(view(&s).is_empty());
    }

    #[test]
    fn apply_replaces_a_slice_and_delete_removes_it_by_name() {
        let port = PortRef::Number(PORT);
        let mut s = SliceState::default();
        s.apply(Event::Apply(slice("a", &["10.0.0.1"])), &port);
        s.apply(Event::Apply(slice("a", &["10.0.0.4", "10.0.0.5"])), &port);
        assert_eq!(view(&s), owned(&[("a", &["10.0.0.4", "10.0.0.5"])]));
        assert!(s.apply(Event::Delete(slice("a", &[])), &port));
        assert!(view(&s).is_empty());
    }

    #[test]
    fn an_empty_set_says_why() {
        let grpc = PortRef::Name("grpc".into());
        let mut s = SliceState::default();
        assert!(s.why_empty(&grpc).contains("no EndpointSlices"), "{}", s.why_empty(&grpc));
        s.apply(Event::Apply(slice("a", &[])), &grpc);
        assert!(s.why_empty(&grpc).contains("no endpoints"), "{}", s.why_empty(&grpc));
        // The slice's one port is unnamed (as for a single-port Service): no port is named grpc.
        s.apply(Event::Apply(slice("a", &["10.0.0.1"])), &grpc);
        assert_eq!(s.why_empty(&grpc), "no port of the Service is named \"grpc\" (its ports: (unnamed))");
        let mut portless = slice("a", &["10.0.0.1"]);
        portless.ports = None;
        s.apply(Event::Apply(portless), &grpc);
        assert!(s.why_empty(&grpc).ends_with("(its EndpointSlices list no ports)"), "{}", s.why_empty(&grpc));
        let by_number = PortRef::Number(PORT);
        s.apply(Event::Apply(slice("a", &["10.0.0.1"])), &by_number);
        assert_eq!(s.port_hint(&by_number), None, "the slices have port {PORT}");
        let service_port = PortRef::Number(80);
        assert!(s.port_hint(&service_port).is_some_and(|h| h.contains("is 80 (its ports: 8080)")));
        // A port without a number leaves ports unrestricted: any number may be right, so no hint.
        let mut unrestricted = slice("a", &["10.0.0.1"]);
        unrestricted.ports = Some(vec![EndpointPort::default()]);
        s.apply(Event::Apply(unrestricted), &service_port);
        assert_eq!(s.port_hint(&service_port), None);
        s.apply(Event::Apply(slice("a", &["10.0.0.1"])), &by_number);
        assert!(s.why_empty(&by_number).contains("ready endpoints has an address of the family"));
        let mut sick = slice("a", &["10.0.0.1", "10.0.0.2"]);
        for ep in sick.endpoints.iter_mut().flatten() {
            ep.conditions = Some(EndpointConditions { ready: Some(false), ..Default::default() });
        }
        s.apply(Event::Apply(sick), &by_number);
        assert_eq!(s.why_empty(&by_number), "none of its 2 endpoints is ready");
        // Endpoints listed but none callable (an FQDN slice): not "none of its 0 endpoints is ready".
        let mut fqdn = slice("a", &["10.0.0.1"]);
        fqdn.address_type = "FQDN".into();
        fqdn.endpoints.iter_mut().flatten().for_each(|e| e.addresses = vec!["hello.example.com".into()]);
        s.apply(Event::Apply(fqdn), &by_number);
        assert!(s.why_empty(&by_number).contains("no endpoint with an IP address"), "{}", s.why_empty(&by_number));
        // A re-list that finds nothing: the outlines are swapped in with the endpoints.
        s.apply(Event::Init, &by_number);
        s.apply(Event::InitDone, &by_number);
        assert!(s.why_empty(&by_number).contains("no EndpointSlices"));
    }

    #[test]
    fn a_second_relist_starts_its_buffer_afresh() {
        let port = PortRef::Number(PORT);
        let mut s = SliceState::default();
        s.apply(Event::Init, &port);
        s.apply(Event::InitApply(slice("a", &["10.0.0.1"])), &port);
        // The watch failed mid-list and re-lists from the start: what the first one buffered is dropped.
        s.apply(Event::Init, &port);
        s.apply(Event::InitApply(slice("b", &["10.0.0.2"])), &port);
        s.apply(Event::InitDone, &port);
        assert_eq!(view(&s), owned(&[("b", &["10.0.0.2"])]));
    }
}
