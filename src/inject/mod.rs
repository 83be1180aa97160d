//! `hello-sidecar inject`: adds the sidecar to Kubernetes workloads, as `linkerd inject` and
//! `istioctl kube-inject` do.
//!
//! Reads a YAML stream (a file or stdin; any number of documents, `List`s too), adds the sidecar as a native
//! sidecar to the pod spec of every Deployment, StatefulSet, DaemonSet, ReplicaSet, ReplicationController,
//! Job, CronJob and Pod ([`sidecar`], [`workload`]), and writes the stream to stdout. Everything else is kept:
//! a document it does not change is written back byte for byte; a changed one is re-written from its parsed
//! tree, keys in their order (comments in it are lost). Injecting twice equals injecting once, and
//! `--uninject` takes the sidecar out again. `--rbac` appends what the sidecars need ([`rbac`]). Other kinds
//! pass through with a note on stderr; a malformed document stops everything with one line naming it
//! ([`InjectError`], exit code 2).

pub mod check;
pub mod rbac;
pub mod sidecar;
pub mod token;
pub mod workload;
pub mod yaml;

use std::io::Read;

pub use crate::cli::InjectArgs;
use sidecar::SidecarSpec;
use yaml::{Document, Node};

/// Why `inject` could not finish. Nothing is written to stdout when it fails.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    /// The input could not be read.
    #[error("cannot read {source_name}: {why}")]
    Read {
        /// File name, or `stdin`.
        source_name: String,
        /// The I/O error.
        why: String,
    },
    /// The sidecar command line `inject` would write is one the sidecar refuses ([`check::sidecar_args`]).
    #[error("the sidecar would not start with these flags: {0}")]
    SidecarArgs(String),
    /// A document is malformed YAML or a malformed workload.
    #[error("{source_name}: document {index} (from line {line}): {why}")]
    Document {
        /// File name, or `stdin`.
        source_name: String,
        /// 1-based position of the document in the stream.
        index: usize,
        /// 1-based line where the document starts.
        line: usize,
        /// What is wrong, on one line.
        why: String,
    },
}

/// The transformed stream and the notes for stderr.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The YAML stream to write.
    pub text: String,
    /// One line per document worth telling about (injected, left as is, nothing to remove).
    pub notes: Vec<String>,
}

/// Runs `inject` on a file or stdin: the stream on stdout, notes on stderr.
pub fn run(args: &InjectArgs) -> Result<(), InjectError> {
    let stdin = args.file.as_os_str() == "-";
    let source_name = if stdin { "stdin".to_owned() } else { args.file.display().to_string() };
    let read_err = |e: std::io::Error| InjectError::Read { source_name: source_name.clone(), why: e.to_string() };
    let mut input = String::new();
    if stdin {
        std::io::stdin().read_to_string(&mut input).map_err(read_err)?;
    } else {
        input = std::fs::read_to_string(&args.file).map_err(read_err)?;
    }
    let outcome = transform(&input, &source_name, args)?;
    for note in &outcome.notes {
        eprintln!("inject: {note}");
    }
    print!("{}", outcome.text);
    Ok(())
}

/// Injects (or uninjects) every workload of a YAML stream.
pub fn transform(input: &str, source_name: &str, args: &InjectArgs) -> Result<Outcome, InjectError> {
    let spec = SidecarSpec {
        image: args.image.clone(),
        target: args.target.clone(),
        routes: args.route.clone(),
        listen: args.listen.to_string(),
        admin_port: args.admin_port,
        extra_args: args.sidecar_arg.clone(),
    };
    if !args.uninject {
        check::sidecar_args(&spec.args()).map_err(InjectError::SidecarArgs)?;
    }
    let sidecar = spec.node().map_err(|e| InjectError::Document {
        source_name: source_name.to_owned(),
        index: 0,
        line: 0,
        why: format!("cannot build the sidecar container: {e}"),
    })?;
    let mut ctx = Context { args, subjects: rbac::Subjects::new(), notes: Vec::new(), sidecar };
    let mut docs = Vec::new();
    for (i, doc) in yaml::split(input).into_iter().enumerate() {
        let fail = |why: String| InjectError::Document {
            source_name: source_name.to_owned(),
            index: i + 1,
            line: doc.line,
            why,
        };
        if doc.text.trim().is_empty() {
            continue;
        }
        docs.push(one_document(&doc, &mut ctx, i + 1).map_err(fail)?);
    }
    if args.rbac {
        let objects = rbac::objects(&args.targets(), &ctx.subjects).map_err(|e| InjectError::Document {
            source_name: source_name.to_owned(),
            index: docs.len(),
            line: 1,
            why: e.to_string(),
        })?;
        if objects.is_empty() {
            ctx.notes.push("--rbac: no Kubernetes target, so no RBAC is needed".to_owned());
        }
        for o in objects {
            let node = serde_json::from_value::<Node>(o).map_err(|e| e.to_string());
            docs.push(node.and_then(|n| yaml::emit(&n)).unwrap_or_default());
        }
    }
    let text = docs.join("---\n");
    // A stream written with CRLF line endings keeps them, separators and --rbac objects included.
    let text = if input.contains("\r\n") { text.replace("\r\n", "\n").replace('\n', "\r\n") } else { text };
    Ok(Outcome { text, notes: ctx.notes })
}

struct Context<'a> {
    args: &'a InjectArgs,
    subjects: rbac::Subjects,
    notes: Vec<String>,
    sidecar: Node,
}

/// One document, as text: unchanged ones verbatim.
fn one_document(doc: &Document<'_>, ctx: &mut Context<'_>, index: usize) -> Result<String, String> {
    if doc.is_empty() {
        return Ok(with_newline(doc.text));
    }
    let mut node = doc.parse()?;
    let changed = object(&mut node, ctx, &format!("document {index}"))?;
    if !changed {
        return Ok(with_newline(doc.text));
    }
    // The comment lines that head the document are kept; comments inside a re-written one are not.
    let head: String =
        doc.text.split_inclusive('\n').take_while(|l| l.trim().is_empty() || l.trim_start().starts_with('#')).collect();
    Ok(head + &yaml::emit(&node)?)
}

/// One object (or a List of them); `true` if it changed.
fn object(node: &mut Node, ctx: &mut Context<'_>, at: &str) -> Result<bool, String> {
    let Some(kind) = node.get("kind").and_then(Node::as_str).map(str::to_owned) else {
        ctx.notes.push(format!("{at}: no kind, so not a Kubernetes object; left as is"));
        return Ok(false);
    };
    if kind == "List" || (kind.ends_with("List") && node.get("items").is_some()) {
        let items = match node.get_mut("items") {
            Some(Node::Seq(items)) => items,
            Some(Node::Null) => return Ok(false),
            _ => return Err(format!("{kind} without a list of items")),
        };
        let mut changed = false;
        for (i, item) in items.iter_mut().enumerate() {
            changed |= object(item, ctx, &format!("{at} item {}", i + 1))?;
        }
        return Ok(changed);
    }
    let metadata = node.get("metadata");
    let name = metadata.and_then(|m| m.get("name").or_else(|| m.get("generateName"))).and_then(Node::as_str);
    let what = format!("{kind}/{}", name.unwrap_or("(unnamed)"));
    let namespace =
        metadata.and_then(|m| m.get("namespace")).and_then(Node::as_str).unwrap_or(&ctx.args.namespace).to_owned();
    // Without an apiVersion (kubectl would refuse it), the kind alone decides, as it did before groups counted.
    let standard = ["v1", "apps/v1", "batch/v1"].iter().find_map(|v| workload::pod_spec_path(v, &kind));
    let api_version = node.get("apiVersion").and_then(Node::as_str).unwrap_or_default();
    let path = if api_version.is_empty() { standard } else { workload::pod_spec_path(api_version, &kind) };
    let Some(path) = path else {
        // A kind Kubernetes runs pods for, under another API group, is a custom resource: passed through.
        let why = if standard.is_some() {
            format!("is not a Kubernetes workload (apiVersion '{api_version}')")
        } else {
            "runs no pods".to_owned()
        };
        ctx.notes.push(format!("{at}: {what} {why}; left as is"));
        return Ok(false);
    };
    let Some(pod_spec) = node.path_mut(path) else {
        return Err(format!("{what} has no {}", path.join(".")));
    };
    if ctx.args.uninject {
        let removed = workload::uninject(pod_spec);
        ctx.notes.push(format!("{at}: {what} {}", if removed { "uninjected" } else { "has no sidecar" }));
        return Ok(removed);
    }
    let ports = [ctx.args.listen.port(), ctx.args.admin_port];
    workload::inject(pod_spec, ctx.sidecar.clone(), &ports).map_err(|e| format!("{what}: {e}"))?;
    if pod_spec.get("hostNetwork") == Some(&Node::Bool(true)) {
        ctx.notes.push(format!(
            "{at}: warning: {what} uses hostNetwork: the sidecar binds ports {} and {} on the node itself",
            ports[0], ports[1]
        ));
    }
    ctx.subjects.insert((namespace, workload::service_account(pod_spec)));
    ctx.notes.push(format!("{at}: {what} injected"));
    Ok(true)
}

fn with_newline(text: &str) -> String {
    if text.ends_with('\n') { text.to_owned() } else { format!("{text}\n") }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn args(extra: &[&str]) -> InjectArgs {
        let cli = Cli::try_parse_from(["hello-sidecar", "inject"].iter().chain(extra)).unwrap();
        let Command::Inject(args) = cli.command else { panic!("not inject") };
        args
    }

    const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: app, image: a}]\n";
    const SERVICE: &str = "kind: Service  # as written\nmetadata: {name: s}\n";

    #[test]
    fn untouched_documents_are_written_back_byte_for_byte() {
        let input = format!("---\n{POD}---\n{SERVICE}---\n\n");
        let out = transform(&input, "stdin", &args(&["--target", "kubernetes:///hello.shop:grpc"])).unwrap();
        let docs: Vec<&str> = out.text.split("---\n").collect();
        assert_eq!(docs.len(), 2, "{}", out.text);
        assert!(docs[0].contains("restartPolicy: Always"));
        assert_eq!(docs[1], SERVICE);
        assert_eq!(out.notes, ["document 2: Pod/p injected", "document 3: Service/s runs no pods; left as is"]);
    }

    #[test]
    fn uninject_of_what_inject_wrote_gives_the_input_back() {
        let injected = transform(POD, "stdin", &args(&["--target", "static:///10.0.0.1:80"])).unwrap().text;
        let back = transform(&injected, "stdin", &args(&["--uninject"])).unwrap().text;
        let parse = |t: &str| Document { text: t, line: 1 }.parse().unwrap();
        assert_eq!(parse(&back), parse(POD));
    }

    #[test]
    fn crlf_documents_keep_their_line_endings() {
        let crlf = format!("{POD}---\n{SERVICE}").replace('\n', "\r\n");
        let out = transform(&crlf, "stdin", &args(&["--target", "kubernetes:///h.shop:grpc", "--rbac"])).unwrap().text;
        assert!(out.contains("---\r\nkind: Service  # as written\r\n"), "{out:?}");
        assert!(out.contains("restartPolicy: Always\r\n"), "{out:?}");
        assert_eq!(out.matches('\n').count(), out.matches("\r\n").count(), "{out:?}");
    }

    #[test]
    fn rbac_only_for_kubernetes_targets() {
        let out = transform(POD, "stdin", &args(&["--target", "static:///10.0.0.1:80", "--rbac"])).unwrap();
        assert!(!out.text.contains("kind: Role"));
        assert!(out.notes.iter().any(|n| n.contains("no RBAC is needed")));
    }

    #[test]
    fn a_bad_document_is_named() {
        let err = transform(&format!("{POD}---\na: [\n"), "in.yaml", &args(&["--target", "static:///1.2.3.4:80"]));
        let msg = err.unwrap_err().to_string();
        assert!(msg.starts_with("in.yaml: document 2 (from line 7): line 7 "), "{msg}");
    }
}
