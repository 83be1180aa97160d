//! The EndpointSlices of one Service as the kube watcher reports them, with a re-list buffered until complete.
//!
//! A re-list (`Init … InitApply … InitDone`) is kept aside and swapped in whole at `InitDone`: slices absent from
//! the new list are gone, and nothing is removed half-way (a half-done re-list would drop the pods not listed yet).

use std::collections::BTreeMap;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::Event;

use super::{
    PortRef,
    slices::{SliceEndpoint, endpoints_of, lacks_port},
};

/// The endpoints of each slice, by slice name.
pub(super) type Slices = BTreeMap<String, Vec<SliceEndpoint>>;

/// Per slice that has endpoints but not the port's name, the port names it has.
type Lacking = BTreeMap<String, Vec<String>>;

/// The current slices and the re-list under way, if any.
#[derive(Default)]
pub(super) struct SliceState {
    current: Slices,
    relist: Option<Slices>,
    lacking: Lacking,
    relist_lacking: Lacking,
}

impl SliceState {
    /// The slices as of the last event that changed them.
    pub(super) fn current(&self) -> &Slices {
        &self.current
    }

    /// Applies one watcher event; returns whether the current slices may have changed (during a re-list they
    /// change only at `InitDone`).
    pub(super) fn apply(&mut self, event: Event<EndpointSlice>, port: &PortRef) -> bool {
        match event {
            // `Init` comes before the LIST request: it says nothing about whether the API answers.
            Event::Init => {
                self.relist = Some(BTreeMap::new());
                self.relist_lacking.clear();
                false
            }
            Event::InitApply(s) => {
                if let Some(buffer) = self.relist.as_mut() {
                    buffer.insert(name_of(&s), endpoints_of(&s, port));
                    note_lacking(&mut self.relist_lacking, &s, port);
                }
                false
            }
            Event::InitDone => {
                self.current = self.relist.take().unwrap_or_default();
                self.lacking = std::mem::take(&mut self.relist_lacking);
                true
            }
            Event::Apply(s) => {
                self.current.insert(name_of(&s), endpoints_of(&s, port));
                note_lacking(&mut self.lacking, &s, port);
                true
            }
            Event::Delete(s) => {
                self.current.remove(&name_of(&s));
                self.lacking.remove(&name_of(&s));
                true
            }
        }
    }
}

impl SliceState {
    /// Why `port` has no endpoints when the Service is the cause: there is no slice at all (the EndpointSlice
    /// controller writes one even for a Service without pods, so there is no such Service, or it has no selector),
    /// or no endpoint of any slice has the port and some slice with endpoints has no port of that name (a typo
    /// such as `grcp` for `grpc`; the note names the ports it has).
    pub(super) fn port_note(&self, port: &PortRef) -> Option<String> {
        if self.current.is_empty() {
            return Some(
                "no EndpointSlices of this Service (label kubernetes.io/service-name): no Service of that name in \
                 the namespace, or a Service without a selector"
                    .into(),
            );
        }
        if self.lacking.is_empty() || self.current.values().any(|eps| !eps.is_empty()) {
            return None;
        }
        let mut names: Vec<&str> = self.lacking.values().flatten().map(String::as_str).collect();
        names.sort_unstable();
        names.dedup();
        Some(format!("the Service's EndpointSlices have no port named \"{port}\" (they have: {})", names.join(", ")))
    }
}

/// Records whether slice `s` lacks `port` (see [`lacks_port`]).
fn note_lacking(lacking: &mut Lacking, s: &EndpointSlice, port: &PortRef) {
    match lacks_port(s, port) {
        Some(names) => lacking.insert(name_of(s), names),
        None => lacking.remove(&name_of(s)),
    };
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

    /// A port name the slices lack is noted with the names they have, kept through a re-list, and cleared once
    /// a slice has it; with no slice left, the note says there is none.
    #[test]
    fn a_port_name_no_slice_has_is_noted_until_one_has_it() {
        let named = |name: &str, port: &str| {
            let mut s = slice(name, &["10.0.0.1"]);
            s.ports = Some(vec![EndpointPort { name: Some(port.into()), port: Some(8080), ..Default::default() }]);
            s
        };
        let typo = PortRef::Name("grcp".into());
        let mut state = SliceState::default();
        assert!(state.apply(Event::Apply(named("a", "grpc")), &typo));
        let note = state.port_note(&typo).unwrap_or_default();
        assert!(note.contains("no port named \"grcp\" (they have: grpc)"), "{note}");
        state.apply(Event::Init, &typo);
        state.apply(Event::InitApply(named("a", "grpc")), &typo);
        state.apply(Event::InitDone, &typo);
        assert!(state.port_note(&typo).is_some(), "a re-list keeps the note");
        state.apply(Event::Apply(named("b", "grcp")), &typo);
        assert_eq!(state.port_note(&typo), None, "a slice has the port: its endpoints are used");
        state.apply(Event::Delete(named("b", "grcp")), &typo);
        state.apply(Event::Delete(named("a", "grpc")), &typo);
        let none = state.port_note(&typo).unwrap_or_default();
        assert!(none.contains("no EndpointSlices of this Service"), "no slice at all: no such Service? {none}");
    }
}
