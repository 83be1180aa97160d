//! The RBAC a sidecar needs: `list` and `watch` on `endpointslices` (`discovery.k8s.io`) in each Kubernetes
//! target's namespace, bound to the pod's service account — a Role and a RoleBinding per target namespace,
//! never a ClusterRole. The Helm chart renders the same objects (`charts/hello-sidecar/templates/rbac.yaml`).

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::discovery::Target;

/// Name of the Role (the same in every namespace, so applying it twice changes nothing).
pub const ROLE_NAME: &str = "hello-sidecar-endpointslices";

/// A pod's identity: (namespace, service account).
pub type Subjects = BTreeSet<(String, String)>;

/// Namespaces whose EndpointSlices a pod in `pod_namespace` watches for these targets (a target without a
/// namespace is in the pod's own, as the sidecar resolves it).
pub fn target_namespaces(targets: &[Target], pod_namespace: &str) -> BTreeSet<String> {
    targets
        .iter()
        .filter_map(|t| match t {
            Target::Kubernetes { namespace, .. } => Some(namespace.as_deref().unwrap_or(pod_namespace).to_owned()),
            Target::Static(_) => None,
        })
        .collect()
}

/// The ServiceAccounts (other than `default`, which always exists), Roles and RoleBindings for these pods.
pub fn objects(targets: &[Target], subjects: &Subjects) -> Result<Vec<serde_json::Value>, serde_json::Error> {
    let mut out = Vec::new();
    for (ns, sa) in subjects.iter().filter(|(_, sa)| sa != "default") {
        out.push(serde_json::to_value(ServiceAccount { metadata: meta(sa, ns), ..Default::default() })?);
    }
    let pairs: BTreeSet<(String, &(String, String))> =
        subjects.iter().flat_map(|s| target_namespaces(targets, &s.0).into_iter().map(move |tns| (tns, s))).collect();
    let role_namespaces: BTreeSet<&String> = pairs.iter().map(|(tns, _)| tns).collect();
    for tns in role_namespaces {
        out.push(serde_json::to_value(Role {
            metadata: meta(ROLE_NAME, tns),
            rules: Some(vec![PolicyRule {
                api_groups: Some(vec!["discovery.k8s.io".to_owned()]),
                resources: Some(vec!["endpointslices".to_owned()]),
                verbs: vec!["list".to_owned(), "watch".to_owned()],
                ..Default::default()
            }]),
        })?);
    }
    for (tns, (ns, sa)) in &pairs {
        out.push(serde_json::to_value(RoleBinding {
            // One binding per service account: injecting another app later adds a binding, never rewrites one.
            metadata: meta(&binding_name(ns, sa), tns),
            role_ref: RoleRef {
                api_group: Some("rbac.authorization.k8s.io".to_owned()),
                kind: "Role".to_owned(),
                name: ROLE_NAME.to_owned(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".to_owned(),
                name: sa.clone(),
                namespace: Some(ns.clone()),
                ..Default::default()
            }]),
        })?);
    }
    Ok(out)
}

/// The RoleBinding name for service account `sa` of namespace `ns`: `hello-sidecar-{ns}-{sa}-{hash}`. The
/// hash (8 hex digits of FNV-1a, 32 bits, over `ns/sa`) keeps pairs apart that read the same once joined by `-`
/// (`shop-web`/`api` and `shop`/`web-api`). At most 253 characters, the limit of an object name.
pub fn binding_name(ns: &str, sa: &str) -> String {
    let hash = format!("{:08x}", fnv1a32(format!("{ns}/{sa}").as_bytes()));
    let readable = format!("hello-sidecar-{ns}-{sa}");
    let room = 253 - hash.len() - 1;
    let readable = if readable.len() > room { readable[..room].trim_end_matches(['-', '.']) } else { &readable };
    format!("{readable}-{hash}")
}

/// FNV-1a, 32 bits (http://www.isthe.com/chongo/tech/comp/fnv/): stable across versions and machines.
fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x0100_0193))
}

fn meta(name: &str, namespace: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        labels: Some([("app.kubernetes.io/managed-by".to_owned(), "hello-sidecar-inject".to_owned())].into()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(uris: &[&str]) -> Vec<Target> {
        uris.iter().map(|u| u.parse().unwrap()).collect()
    }

    #[test]
    fn a_role_and_binding_in_each_target_namespace() {
        let t = targets(&["kubernetes:///hello.shop:grpc", "kubernetes:///orders:8080", "static:///10.0.0.1:80"]);
        let subjects: Subjects = [("web".to_owned(), "frontend".to_owned())].into();
        let objs = objects(&t, &subjects).unwrap();
        let summary: Vec<(String, String, String)> = objs
            .iter()
            .map(|o| {
                let s = |p: &str| o.pointer(p).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
                (s("/kind"), s("/metadata/namespace"), s("/metadata/name"))
            })
            .collect();
        let row = |k: &str, ns: &str, n: &str| (k.to_owned(), ns.to_owned(), n.to_owned());
        assert_eq!(
            summary,
            [
                row("ServiceAccount", "web", "frontend"),
                row("Role", "shop", ROLE_NAME),
                row("Role", "web", ROLE_NAME),
                row("RoleBinding", "shop", &binding_name("web", "frontend")),
                row("RoleBinding", "web", &binding_name("web", "frontend")),
            ]
        );
        assert_eq!(objs[3].pointer("/subjects/0/namespace").and_then(|v| v.as_str()), Some("web"));
        assert!(!objs.iter().any(|o| o["kind"] == "ClusterRole"));
    }

    #[test]
    fn binding_names_tell_every_service_account_apart() {
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c, "the published FNV-1a test vector");
        let (a, b) = (binding_name("shop-web", "api"), binding_name("shop", "web-api"));
        assert!(a.starts_with("hello-sidecar-shop-web-api-") && a != b, "{a} {b}");
        assert_eq!(binding_name("web", "x".repeat(300).as_str()).len(), 253);
    }

    #[test]
    fn static_targets_need_nothing() {
        let subjects: Subjects = [("web".to_owned(), "default".to_owned())].into();
        assert!(objects(&targets(&["static:///10.0.0.1:80"]), &subjects).unwrap().is_empty());
    }
}
