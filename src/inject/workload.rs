//! Where each workload kind keeps its pod spec, and adding or removing the sidecar there.
//!
//! Only `initContainers` changes: the sidecar entry is put first (so it also serves the other init
//! containers), or replaced in place when it is already there (inject twice = once). Removing it drops an
//! `initContainers` list left empty, so `--uninject` gives back what `inject` was given (its meaning).

use k8s_openapi::api::core::v1::PodSpec;

use super::sidecar::SIDECAR_NAME;
use super::token;
use super::yaml::Node;

/// The path from an object of `apiVersion` and `kind` to its pod spec, or `None` for one that is not a
/// Kubernetes workload. The API group counts, not the version: a custom resource that reuses a kind
/// (`batch.volcano.sh/v1alpha1` `Job`) is not one. Groups: core (`v1`) for Pod and ReplicationController, `apps`
/// (and the retired `extensions`) for Deployment, StatefulSet, DaemonSet and ReplicaSet, `batch` for Job and CronJob.
pub fn pod_spec_path(api_version: &str, kind: &str) -> Option<&'static [&'static str]> {
    let group = api_version.rsplit_once('/').map_or("", |(group, _)| group);
    match (group, kind) {
        ("", "Pod") => Some(&["spec"]),
        ("apps" | "extensions", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet")
        | ("", "ReplicationController")
        | ("batch", "Job") => Some(&["spec", "template", "spec"]),
        ("batch", "CronJob") => Some(&["spec", "jobTemplate", "spec", "template", "spec"]),
        _ => None,
    }
}

/// The namespace and service account a pod spec runs as (`default` when unset).
pub fn service_account(pod_spec: &Node) -> String {
    pod_spec
        .get("serviceAccountName")
        .or_else(|| pod_spec.get("serviceAccount"))
        .and_then(Node::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
        .to_owned()
}

/// Checks that a pod spec is one (through k8s-openapi's `PodSpec`), so a malformed workload is refused rather
/// than half edited.
pub fn check_pod_spec(pod_spec: &Node) -> Result<(), String> {
    let json = pod_spec.to_json().map_err(|e| e.to_string())?;
    serde_json::from_value::<PodSpec>(json).map(|_| ()).map_err(|e| format!("not a valid pod spec: {e}"))
}

/// Adds (or replaces) the sidecar in a pod spec. Fails if an app container already has the sidecar's name.
/// With `automountServiceAccountToken: false` the sidecar (only) gets a projected token ([`token`]).
///
/// `ports` are the ones the sidecar binds: containers of a pod share one network namespace, so a pod whose
/// containers already declare one is refused, as is a pod spec without containers (the API server would be).
pub fn inject(pod_spec: &mut Node, mut sidecar: Node, ports: &[u16]) -> Result<(), String> {
    check_pod_spec(pod_spec)?;
    if !matches!(pod_spec.get("containers"), Some(Node::Seq(c)) if !c.is_empty()) {
        return Err("the pod spec has no containers".to_owned());
    }
    if let Some((container, port)) = port_in_use(pod_spec, ports) {
        return Err(format!(
            "container '{container}' already uses port {port}, which the sidecar binds (pick others with --admin-port or --listen)"
        ));
    }
    if token::automount_off(pod_spec) {
        token::add(pod_spec, &mut sidecar)?;
    } else {
        token::remove(pod_spec);
    }
    if let Some(Node::Seq(containers)) = pod_spec.get("containers")
        && containers.iter().any(is_sidecar)
    {
        return Err(format!("an app container is already named '{SIDECAR_NAME}'"));
    }
    if pod_spec.get("initContainers").is_none_or(|n| *n == Node::Null) {
        pod_spec.insert("initContainers", Node::Seq(Vec::new()));
    }
    let Some(Node::Seq(init)) = pod_spec.get_mut("initContainers") else {
        return Err("initContainers is not a list".to_owned());
    };
    match init.iter().position(is_sidecar) {
        Some(i) => init[i] = sidecar,
        None => init.insert(0, sidecar),
    }
    Ok(())
}

/// Removes the sidecar from a pod spec; `true` if there was one.
pub fn uninject(pod_spec: &mut Node) -> bool {
    let Some(Node::Seq(init)) = pod_spec.get_mut("initContainers") else {
        return false;
    };
    let before = init.len();
    init.retain(|c| !is_sidecar(c));
    let removed = init.len() != before;
    if removed && init.is_empty() {
        pod_spec.remove("initContainers");
    }
    if removed {
        token::remove(pod_spec);
    }
    removed
}

/// The first app or init container (not the sidecar) that declares one of `ports`, and the port.
fn port_in_use(pod_spec: &Node, ports: &[u16]) -> Option<(String, u16)> {
    let lists = ["containers", "initContainers"].into_iter().filter_map(|k| match pod_spec.get(k) {
        Some(Node::Seq(c)) => Some(c),
        _ => None,
    });
    lists.flatten().filter(|c| !is_sidecar(c)).find_map(|c| {
        let Some(Node::Seq(declared)) = c.get("ports") else { return None };
        let name = c.get("name").and_then(Node::as_str).unwrap_or_default().to_owned();
        declared.iter().find_map(|p| match p.get("containerPort") {
            Some(Node::Uint(n)) => ports.iter().find(|want| u64::from(**want) == *n).map(|want| (name.clone(), *want)),
            _ => None,
        })
    })
}

fn is_sidecar(container: &Node) -> bool {
    container.get("name").and_then(Node::as_str) == Some(SIDECAR_NAME)
}

#[cfg(test)]
mod tests {
    use super::super::yaml::Document;
    use super::*;

    fn parse(text: &str) -> Node {
        Document { text, line: 1 }.parse().unwrap()
    }

    fn sidecar() -> Node {
        parse("name: hello-sidecar\nimage: x\nrestartPolicy: Always\n")
    }

    #[test]
    fn every_workload_kind_has_its_pod_spec_path() {
        assert_eq!(pod_spec_path("apps/v1", "Deployment"), Some(&["spec", "template", "spec"][..]));
        assert_eq!(pod_spec_path("batch/v1", "CronJob").map(<[_]>::len), Some(5));
        assert_eq!(pod_spec_path("v1", "Pod"), Some(&["spec"][..]));
        assert_eq!(pod_spec_path("v1", "Service"), None);
        assert_eq!(pod_spec_path("batch.volcano.sh/v1alpha1", "Job"), None, "a custom resource of kind Job");
        assert_eq!(pod_spec_path("example.com/v1", "Pod"), None);
    }

    #[test]
    fn inject_puts_the_sidecar_first_once_and_uninject_takes_it_back() {
        let original = parse("containers: [{name: app, image: app}]\ninitContainers: [{name: migrate, image: m}]\n");
        let mut spec = original.clone();
        inject(&mut spec, sidecar(), &[9901]).unwrap();
        let once = spec.clone();
        inject(&mut spec, sidecar(), &[9901]).unwrap();
        assert_eq!(spec, once, "inject twice = once");
        let Some(Node::Seq(init)) = spec.get("initContainers") else { panic!("no list") };
        assert_eq!(init.len(), 2);
        assert!(is_sidecar(&init[0]));
        assert!(uninject(&mut spec));
        assert_eq!(spec, original);
        assert!(!uninject(&mut spec), "nothing left to remove");
    }

    #[test]
    fn uninject_drops_the_list_it_created() {
        let original = parse("containers: [{name: app, image: app}]\n");
        let mut spec = original.clone();
        inject(&mut spec, sidecar(), &[9901]).unwrap();
        assert!(uninject(&mut spec));
        assert_eq!(spec, original);
    }

    #[test]
    fn malformed_or_conflicting_pod_specs_are_refused() {
        assert!(inject(&mut parse("containers: 3\n"), sidecar(), &[]).is_err());
        assert!(inject(&mut parse("initContainers: {a: 1}\ncontainers: [{name: a}]\n"), sidecar(), &[]).is_err());
        let clash = inject(&mut parse("containers: [{name: hello-sidecar, image: x}]\n"), sidecar(), &[]);
        assert!(clash.unwrap_err().contains("already named"));
        let none = inject(&mut parse("{}"), sidecar(), &[]);
        assert_eq!(none.unwrap_err(), "the pod spec has no containers");
        let taken = "containers: [{name: app, ports: [{containerPort: 8080}, {containerPort: 9901}]}]\n";
        let err = inject(&mut parse(taken), sidecar(), &[50051, 9901]).unwrap_err();
        assert!(err.starts_with("container 'app' already uses port 9901"), "{err}");
    }

    #[test]
    fn without_an_automounted_token_the_sidecar_alone_gets_a_projected_one() {
        let original = parse("automountServiceAccountToken: false\ncontainers: [{name: app, image: app}]\n");
        let mut spec = original.clone();
        inject(&mut spec, sidecar(), &[9901]).unwrap();
        let once = spec.clone();
        inject(&mut spec, sidecar(), &[9901]).unwrap();
        assert_eq!(spec, once, "inject twice = once");
        let Some(Node::Seq(volumes)) = spec.get("volumes") else { panic!("no volumes: {spec:?}") };
        assert_eq!(volumes.len(), 1);
        let Some(Node::Seq(init)) = spec.get("initContainers") else { panic!("no list") };
        let mounts = init[0].get("volumeMounts").expect("the sidecar mounts the token");
        assert_eq!(mounts, &Node::Seq(vec![token::mount().unwrap()]));
        let Some(Node::Seq(containers)) = spec.get("containers") else { panic!("no containers") };
        assert!(containers[0].get("volumeMounts").is_none(), "the app still has no token");
        assert!(uninject(&mut spec));
        assert_eq!(spec, original);
    }

    #[test]
    fn the_service_account_defaults_to_default() {
        assert_eq!(service_account(&parse("containers: []\n")), "default");
        assert_eq!(service_account(&parse("serviceAccountName: shop\ncontainers: []\n")), "shop");
    }
}
