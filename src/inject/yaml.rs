//! Kubernetes YAML streams: split into documents as `kubectl` does, parse each into an order-keeping tree,
//! and write a tree back.
//!
//! Documents are separated by a line that starts with `---` followed by nothing but blanks or a comment
//! (the rule of `k8s.io/apimachinery/pkg/util/yaml.YAMLReader`). Each document is parsed on its own, so an
//! error names the document and the line it starts on.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

/// One YAML value. Mappings keep their keys in the order they were written, so a re-written manifest reads as
/// the original did. Keys are strings; a scalar key (`80:`) becomes its text, as `sigs.k8s.io/yaml` does.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// `null`, `~` or nothing.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// A negative integer.
    Int(i64),
    /// A non-negative integer.
    Uint(u64),
    /// A float.
    Float(f64),
    /// A string.
    Str(String),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in source order, keys unique.
    Map(Vec<(String, Node)>),
}

impl Node {
    /// The value at `key` of a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match self {
            Node::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The value at `key` of a mapping, mutably.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Node> {
        match self {
            Node::Map(entries) => entries.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Follows a path of mapping keys.
    pub fn path_mut(&mut self, path: &[&str]) -> Option<&mut Node> {
        path.iter().try_fold(self, |node, key| node.get_mut(key))
    }

    /// The string value, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Node::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Removes `key` from a mapping and returns its value.
    pub fn remove(&mut self, key: &str) -> Option<Node> {
        match self {
            Node::Map(entries) => {
                let i = entries.iter().position(|(k, _)| k == key)?;
                Some(entries.remove(i).1)
            }
            _ => None,
        }
    }

    /// Sets `key` in a mapping: in place if present, else appended. No effect on a non-mapping.
    pub fn insert(&mut self, key: &str, value: Node) {
        if let Node::Map(entries) = self {
            match entries.iter_mut().find(|(k, _)| k == key) {
                Some((_, v)) => *v = value,
                None => entries.push((key.to_owned(), value)),
            }
        }
    }

    /// A tree from any serializable value (e.g. a k8s-openapi object), through its JSON form.
    pub fn from_serialize<T: Serialize>(value: &T) -> Result<Node, serde_json::Error> {
        Node::deserialize(serde_json::to_value(value)?)
    }

    /// The tree as JSON, to read it into a typed k8s-openapi object.
    pub fn to_json(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::to_value(self)
    }
}

impl Serialize for Node {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Node::Null => s.serialize_unit(),
            Node::Bool(b) => s.serialize_bool(*b),
            Node::Int(i) => s.serialize_i64(*i),
            Node::Uint(u) => s.serialize_u64(*u),
            Node::Float(f) => s.serialize_f64(*f),
            Node::Str(v) => s.serialize_str(v),
            Node::Seq(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Node::Map(entries) => {
                let mut map = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Node, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML value")
    }
    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(if v < 0 { Node::Int(v) } else { Node::Uint(v as u64) })
    }
    fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Uint(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries: Vec<(String, Node)> = Vec::new();
        while let Some(key) = map.next_key::<Node>()? {
            let key = match key {
                Node::Str(s) => s,
                Node::Bool(b) => b.to_string(),
                Node::Int(i) => i.to_string(),
                Node::Uint(u) => u.to_string(),
                Node::Float(f) => f.to_string(),
                Node::Null | Node::Seq(_) | Node::Map(_) => {
                    return Err(de::Error::custom("a mapping key must be a scalar"));
                }
            };
            if entries.iter().any(|(k, _)| *k == key) {
                return Err(de::Error::custom(format!("duplicate key '{key}'")));
            }
            let value = map.next_value()?;
            entries.push((key, value));
        }
        Ok(Node::Map(entries))
    }
}

/// One document of a stream: its text (without the separator line) and the 1-based line it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document<'a> {
    /// The document's text, as written.
    pub text: &'a str,
    /// 1-based line of the input where the text starts.
    pub line: usize,
}

impl Document<'_> {
    /// True when the document holds nothing but blanks and comments (`kubectl` skips those).
    pub fn is_empty(&self) -> bool {
        self.text.lines().all(|l| {
            let t = l.trim();
            t.is_empty() || t.starts_with('#')
        })
    }

    /// Parses the document, within limits that grow with its size (`limits`).
    pub fn parse(&self) -> Result<Node, String> {
        serde_saphyr::from_str_with_options::<Node>(self.text, limits(self.text.len())).map_err(|e| {
            if let serde_saphyr::Error::Budget { breach, .. } = e.without_snippet() {
                return format!("document too large to inject: {}", too_large(breach));
            }
            let text = e.to_string();
            if text.contains("budget breached") {
                return format!("document too large to inject: {}", too_large_text(&text));
            }
            let first = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("invalid YAML");
            self.absolute(first.trim_start_matches("error: "))
        })
    }

    /// Rewrites the parser's `line N column M: …` (within the document) to the line of the whole input.
    fn absolute(&self, message: &str) -> String {
        let parsed = message
            .strip_prefix("line ")
            .and_then(|rest| rest.split_once(' '))
            .and_then(|(n, rest)| n.parse::<usize>().ok().map(|n| format!("line {} {rest}", n + self.line - 1)));
        parsed.unwrap_or_else(|| message.to_owned())
    }
}

/// Deepest nesting accepted: far past any workload, and well within the stack.
pub const MAX_DEPTH: usize = 256;

/// Values (nodes) a document may hold at least, aliases expanded: 8 times serde-saphyr's default, about
/// 200 MB of tree at worst. A document written out in full may hold as many as it has bytes.
pub const MAX_NODES: usize = 2_000_000;

/// The parser's resource limits for a document of `len` bytes. serde-saphyr's defaults (250,000 nodes,
/// 1,000,000 events) refuse a `kubectl get deploy -A -o yaml` List of a few thousand items. A node or an event
/// takes at least a byte or two of text, so limits that grow with the input bound only what aliases could
/// expand to (whose own limits stay at the defaults) and never refuse YAML written out in full.
fn limits(len: usize) -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_nodes = MAX_NODES.max(len.saturating_add(16));
    budget.max_events = budget.max_events.max(4 * MAX_NODES).max(len.saturating_mul(2).saturating_add(16));
    budget.max_total_scalar_bytes = budget.max_total_scalar_bytes.max(len.saturating_add(16));
    budget.max_depth = MAX_DEPTH;
    // One anchor used thousands of times (PyYAML writes a repeated object so) is fine: the node and event
    // limits above already bound what aliases expand to.
    budget.enforce_alias_anchor_ratio = false;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options
}

/// A budget breach in words, without the parser's internals.
fn too_large(breach: &serde_saphyr::budget::BudgetBreach) -> String {
    use serde_saphyr::budget::BudgetBreach as B;
    match breach {
        B::Depth { .. } => format!("nested deeper than {MAX_DEPTH} levels"),
        B::Aliases { .. } | B::Anchors { .. } | B::AliasAnchorRatio { .. } | B::MergeKeys { .. } => {
            "too many aliases, anchors or merge keys".to_owned()
        }
        B::Nodes { .. } => format!("more than {MAX_NODES} values once aliases are expanded"),
        _ => "more values than its size allows (aliases expanding?)".to_owned(),
    }
}

/// The same, for a breach the parser reports only as text (`budget breached: Nodes { nodes: … }`).
fn too_large_text(text: &str) -> String {
    let kind = text.split("budget breached:").nth(1).and_then(|rest| rest.split_whitespace().next()).unwrap_or("");
    match kind {
        "Depth" => format!("nested deeper than {MAX_DEPTH} levels"),
        "Aliases" | "Anchors" | "AliasAnchorRatio" | "MergeKeys" => {
            "too many aliases, anchors or merge keys".to_owned()
        }
        "Nodes" => format!("more than {MAX_NODES} values once aliases are expanded"),
        _ => "more values than its size allows (aliases expanding?)".to_owned(),
    }
}

/// Splits a stream at `---` separator lines.
pub fn split(input: &str) -> Vec<Document<'_>> {
    let mut docs = Vec::new();
    let (mut start, mut start_line, mut offset) = (0, 1, 0);
    for (i, line) in input.split_inclusive('\n').enumerate() {
        if is_separator(line) {
            docs.push(Document { text: &input[start..offset], line: start_line });
            start = offset + line.len();
            start_line = i + 2;
        }
        offset += line.len();
    }
    docs.push(Document { text: &input[start..], line: start_line });
    docs
}

fn is_separator(line: &str) -> bool {
    line.strip_prefix("---").is_some_and(|rest| {
        let rest = rest.trim();
        rest.is_empty() || rest.starts_with('#')
    })
}

/// Writes a tree as a YAML document (no separator), ending in a newline.
pub fn emit(node: &Node) -> Result<String, String> {
    let mut text = serde_saphyr::to_string(node).map_err(|e| e.to_string())?;
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_saphyr::budget::BudgetBreach as B;

    #[test]
    fn splits_at_separator_lines_only() {
        let docs = split("a: 1\n---\nb: '---'\n--- # two\nc: |\n  ---x\n");
        let texts: Vec<_> = docs.iter().map(|d| (d.text, d.line)).collect();
        assert_eq!(texts, vec![("a: 1\n", 1), ("b: '---'\n", 3), ("c: |\n  ---x\n", 5)]);
        assert!(split("---\n# only a comment\n")[1].is_empty());
        assert!(split("---\n")[0].is_empty());
    }

    #[test]
    fn keeps_key_order_and_scalar_types_through_a_round_trip() {
        let text = "zeta: 1\nalpha: 'true'\nmid: '0.1'\nport: 8080\nneg: -3\nf: 0.5\nnothing: null\nb: false\nlist: [x, '1']\n";
        let node = Document { text, line: 1 }.parse().unwrap();
        let Node::Map(entries) = &node else { panic!("not a map: {node:?}") };
        let keys: Vec<_> = entries.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["zeta", "alpha", "mid", "port", "neg", "f", "nothing", "b", "list"]);
        assert_eq!(node.get("alpha"), Some(&Node::Str("true".into())));
        assert_eq!(node.get("port"), Some(&Node::Uint(8080)));
        let again = Document { text: &emit(&node).unwrap(), line: 1 }.parse().unwrap();
        assert_eq!(again, node, "re-emitted text must parse to the same tree");
    }

    #[test]
    fn a_large_document_parses_and_a_breach_is_named_plainly() {
        // 11 nodes an item: 330,000 in all, past serde-saphyr's default of 250,000.
        let big = format!("items:\n{}", "- {a: 1, b: [x, y], c: {d: e}}\n".repeat(30_000));
        let Some(Node::Seq(items)) = Document { text: &big, line: 1 }.parse().unwrap().get("items").cloned() else {
            panic!("no items")
        };
        assert_eq!(items.len(), 30_000);
        // A billion laughs: 10 levels of 10 aliases each would be 10^10 values.
        let mut laughs = "a0: &a0 [x]\n".to_owned();
        for i in 1..10 {
            laughs += &format!("a{i}: &a{i} [{}]\n", vec![format!("*a{}", i - 1); 10].join(", "));
        }
        let err = Document { text: &laughs, line: 1 }.parse().unwrap_err();
        assert!(err.starts_with("document too large to inject: "), "{err}");
        assert!(!err.contains('{'), "no parser internals: {err}");
        assert_eq!(too_large_text("line 3: budget breached: Nodes { nodes: 1 }"), too_large(&B::Nodes { nodes: 1 }));
    }

    #[test]
    fn rejects_duplicate_keys_and_broken_yaml_with_one_line() {
        let dup = Document { text: "a: 1\na: 2\n", line: 1 }.parse().unwrap_err();
        assert!(dup.contains("duplicate"), "{dup}");
        let broken = Document { text: "x: 1\na: [1, 2\n", line: 10 }.parse().unwrap_err();
        assert!(!broken.contains('\n') && broken.starts_with("line 11 "), "{broken}");
    }
}
