//! The stand-in's object store: EndpointSlices with one global resourceVersion counter, like etcd, and the event
//! history a watch can resume from until it is compacted.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use tokio::sync::broadcast;

/// A watch event as the API server sends it.
#[derive(Debug, Clone)]
pub struct Event {
    /// The resourceVersion the change was written at.
    pub rv: u64,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub kind: &'static str,
    /// The object (after the change; for `DELETED`, its last state with the deletion's resourceVersion).
    pub object: Value,
    /// The object before a change (`MODIFIED`), so a watch can tell a slice that left or joined its selector.
    pub prev: Option<Value>,
}

impl Event {
    /// How a watch whose filter is `matches` sees this change, as the API server's watch cache sends it: an
    /// object that stopped matching is `DELETED` for it, one that started matching `ADDED`, one that never
    /// matched nothing.
    pub fn seen_through(&self, matches: impl Fn(&Value) -> bool) -> Option<&'static str> {
        let now = matches(&self.object);
        if self.kind == "DELETED" {
            return now.then_some("DELETED");
        }
        match (self.prev.as_ref().is_some_and(&matches), now) {
            (true, true) => Some("MODIFIED"),
            (false, true) => Some("ADDED"),
            (true, false) => Some("DELETED"),
            (false, false) => None,
        }
    }
}

/// Objects, history and the live event feed.
pub struct Store {
    rv: u64,
    objects: BTreeMap<(String, String), Value>,
    history: Vec<Event>,
    compacted_at: u64,
    feed: broadcast::Sender<Event>,
}

/// A watch asked to resume from a resourceVersion that history no longer holds.
#[derive(Debug)]
pub struct Gone {
    /// The oldest resourceVersion a watch can resume from.
    pub oldest: u64,
}

impl Default for Store {
    fn default() -> Self {
        Self { rv: 1, objects: BTreeMap::new(), history: Vec::new(), compacted_at: 1, feed: broadcast::channel(4096).0 }
    }
}

impl Store {
    /// The current resourceVersion.
    pub fn rv(&self) -> u64 {
        self.rv
    }

    /// Creates or replaces an object (keyed by namespace and name), stamping a new resourceVersion.
    pub fn put(&mut self, mut object: Value) {
        let (ns, name) = key_of(&object);
        self.rv += 1;
        let rv = self.rv;
        let meta = &mut object["metadata"];
        meta["resourceVersion"] = json!(rv.to_string());
        let old = self.objects.get(&(ns.clone(), name.clone()));
        let uid = old
            .and_then(|o| o["metadata"]["uid"].as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("uid-{ns}-{name}-{rv}"));
        meta["uid"] = json!(uid);
        if meta.get("creationTimestamp").is_none_or(Value::is_null) {
            meta["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        let kind = if old.is_some() { "MODIFIED" } else { "ADDED" };
        let prev = old.cloned();
        self.objects.insert((ns, name), object.clone());
        self.emit(Event { rv, kind, object, prev });
    }

    /// Deletes an object; returns whether it existed.
    pub fn delete(&mut self, ns: &str, name: &str) -> bool {
        let Some(mut object) = self.objects.remove(&(ns.to_owned(), name.to_owned())) else { return false };
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.emit(Event { rv: self.rv, kind: "DELETED", object, prev: None });
        true
    }

    /// Forgets history: a watch from before now gets 410 Gone.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted_at = self.rv;
    }

    /// The objects in `ns` (all namespaces when `None`) matching `selector`, sorted by namespace and name.
    pub fn list(&self, ns: Option<&str>, selector: &Selector) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|((o_ns, _), o)| ns.is_none_or(|n| n == o_ns) && selector.matches(o))
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// Starts a watch after `from`: the events it missed, and the live feed from here on.
    pub fn watch(&self, from: u64) -> Result<(Vec<Event>, broadcast::Receiver<Event>), Gone> {
        if from < self.compacted_at {
            return Err(Gone { oldest: self.compacted_at });
        }
        let missed = self.history.iter().filter(|e| e.rv > from).cloned().collect();
        Ok((missed, self.feed.subscribe()))
    }

    fn emit(&mut self, event: Event) {
        self.history.push(event.clone());
        let _ = self.feed.send(event);
    }
}

fn key_of(o: &Value) -> (String, String) {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    (s(&o["metadata"]["namespace"]), s(&o["metadata"]["name"]))
}

/// The namespace of an object.
pub fn namespace_of(o: &Value) -> &str {
    o["metadata"]["namespace"].as_str().unwrap_or_default()
}

/// An equality-based label selector: `a=b`, `a==b`, `a!=b`, `a`, `!a`, joined by commas.
#[derive(Debug, Default, Clone)]
pub struct Selector(Vec<Requirement>);

#[derive(Debug, Clone)]
enum Requirement {
    Eq(String, String),
    Ne(String, String),
    Exists(String),
    Absent(String),
}

impl Selector {
    /// Parses a selector; `None` for a malformed one (the API server answers 400).
    pub fn parse(s: &str) -> Option<Self> {
        let mut reqs = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let req = if let Some((k, v)) = part.split_once("!=") {
                Requirement::Ne(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Requirement::Eq(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some(k) = part.strip_prefix('!') {
                Requirement::Absent(k.trim().to_owned())
            } else if part.contains(' ') {
                return None;
            } else {
                Requirement::Exists(part.to_owned())
            };
            reqs.push(req);
        }
        Some(Self(reqs))
    }

    /// Whether `object`'s labels satisfy every requirement.
    pub fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Requirement::Eq(k, v) => get(k) == Some(v.as_str()),
            Requirement::Ne(k, v) => get(k) != Some(v.as_str()),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::Absent(k) => get(k).is_none(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(ns: &str, name: &str, svc: &str) -> Value {
        json!({"metadata": {"namespace": ns, "name": name, "labels": {"kubernetes.io/service-name": svc}}})
    }

    #[test]
    fn every_write_gets_the_next_global_resource_version() {
        let mut s = Store::default();
        s.put(obj("default", "a", "hello"));
        s.put(obj("other", "b", "hello"));
        s.put(obj("default", "a", "hello"));
        assert_eq!(s.rv(), 4);
        let (missed, _) = s.watch(2).expect("not compacted");
        assert_eq!(missed.iter().map(|e| (e.rv, e.kind)).collect::<Vec<_>>(), [(3, "ADDED"), (4, "MODIFIED")]);
        assert!(s.delete("default", "a"));
        assert!(!s.delete("default", "a"));
        s.compact();
        assert!(s.watch(4).is_err(), "history before the compaction is gone");
        assert!(s.watch(5).is_ok());
    }

    #[test]
    fn selectors_filter_by_labels() {
        let mut s = Store::default();
        s.put(obj("default", "a", "hello"));
        s.put(obj("default", "b", "other"));
        let sel = |q| Selector::parse(q).expect("parses");
        assert_eq!(s.list(Some("default"), &sel("kubernetes.io/service-name=hello")).len(), 1);
        assert_eq!(s.list(Some("default"), &sel("kubernetes.io/service-name!=hello")).len(), 1);
        assert_eq!(s.list(None, &sel("kubernetes.io/service-name")).len(), 2);
        assert_eq!(s.list(None, &sel("!kubernetes.io/service-name")).len(), 0);
        assert!(Selector::parse("a b").is_none());
    }
}
