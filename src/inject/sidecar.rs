//! The sidecar container that `inject` adds: a native sidecar (KEP-753: an init container with
//! `restartPolicy: Always`, Kubernetes ≥ 1.29), probed on its admin port, hardened, with bounded resources —
//! the same container the Helm chart renders (`hello-sidecar.sidecarContainer` in `charts/hello-sidecar`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, HTTPGetAction, Probe, ResourceRequirements, SeccompProfile, SecurityContext,
};
use k8s_openapi::apimachinery::pkg::{api::resource::Quantity, util::intstr::IntOrString};

use super::yaml::Node;

/// The injected container's name: how `inject` recognises (and `--uninject` removes) its own work.
pub const SIDECAR_NAME: &str = "hello-sidecar";

/// What the injected sidecar runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct SidecarSpec {
    /// Image reference.
    pub image: String,
    /// `--target` URI, if given (validated).
    pub target: Option<String>,
    /// `--route SERVICE=URI` values, passed through as given (validated URI part).
    pub routes: Vec<String>,
    /// `--listen` address for the app's calls.
    pub listen: String,
    /// Admin port (probes, metrics), bound on all addresses so the kubelet can probe it.
    pub admin_port: u16,
    /// More sidecar flags, appended as given (e.g. `--retry-budget=0.1`).
    pub extra_args: Vec<String>,
}

impl SidecarSpec {
    /// The sidecar's command line after the image's entrypoint.
    pub fn args(&self) -> Vec<String> {
        let mut args = vec!["sidecar".to_owned()];
        args.extend(self.target.iter().map(|t| format!("--target={t}")));
        args.extend(self.routes.iter().map(|r| format!("--route={r}")));
        args.push(format!("--listen={}", self.listen));
        args.push(format!("--admin=0.0.0.0:{}", self.admin_port));
        args.extend(self.extra_args.iter().cloned());
        args
    }

    /// The typed container.
    pub fn container(&self) -> Container {
        let probe = |path: &str, period: i32, failures: Option<i32>| Probe {
            http_get: Some(HTTPGetAction {
                path: Some(path.to_owned()),
                port: IntOrString::String("admin".to_owned()),
                ..Default::default()
            }),
            period_seconds: Some(period),
            failure_threshold: failures,
            ..Default::default()
        };
        let quantities = |cpu: &str, memory: &str| {
            BTreeMap::from([
                ("cpu".to_owned(), Quantity(cpu.to_owned())),
                ("memory".to_owned(), Quantity(memory.to_owned())),
            ])
        };
        Container {
            name: SIDECAR_NAME.to_owned(),
            image: Some(self.image.clone()),
            // Native sidecar: starts before the app's containers and the later init containers, stops after.
            restart_policy: Some("Always".to_owned()),
            args: Some(self.args()),
            ports: Some(vec![ContainerPort {
                name: Some("admin".to_owned()),
                container_port: i32::from(self.admin_port),
                protocol: Some("TCP".to_owned()),
                ..Default::default()
            }]),
            // Up to a minute for the first EndpointSlice sync; the app starts only after it.
            startup_probe: Some(probe("/ready", 1, Some(60))),
            readiness_probe: Some(probe("/ready", 5, None)),
            liveness_probe: Some(probe("/live", 10, None)),
            resources: Some(ResourceRequirements {
                requests: Some(quantities("20m", "16Mi")),
                limits: Some(quantities("1", "64Mi")),
                ..Default::default()
            }),
            security_context: Some(SecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(65532),
                run_as_group: Some(65532),
                read_only_root_filesystem: Some(true),
                allow_privilege_escalation: Some(false),
                capabilities: Some(Capabilities { drop: Some(vec!["ALL".to_owned()]), ..Default::default() }),
                seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".to_owned(), ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The container as a YAML tree, `name` first as people write it.
    pub fn node(&self) -> Result<Node, serde_json::Error> {
        let mut node = Node::from_serialize(&self.container())?;
        if let Node::Map(entries) = &mut node
            && let Some(i) = entries.iter().position(|(k, _)| k == "name")
        {
            let name = entries.remove(i);
            entries.insert(0, name);
        }
        Ok(node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::DEFAULT_IMAGE;

    fn spec() -> SidecarSpec {
        SidecarSpec {
            image: DEFAULT_IMAGE.to_owned(),
            target: Some("kubernetes:///hello.shop:grpc".to_owned()),
            routes: vec!["acme.Orders=kubernetes:///orders.shop:grpc".to_owned()],
            listen: "127.0.0.1:50051".to_owned(),
            admin_port: 9901,
            extra_args: vec!["--retry-budget=0.1".to_owned()],
        }
    }

    #[test]
    fn the_container_is_a_probed_hardened_native_sidecar() {
        let c = spec().container();
        assert_eq!(c.restart_policy.as_deref(), Some("Always"));
        assert_eq!(
            c.args.unwrap(),
            [
                "sidecar",
                "--target=kubernetes:///hello.shop:grpc",
                "--route=acme.Orders=kubernetes:///orders.shop:grpc",
                "--listen=127.0.0.1:50051",
                "--admin=0.0.0.0:9901",
                "--retry-budget=0.1"
            ]
        );
        for probe in [c.startup_probe, c.readiness_probe, c.liveness_probe] {
            let get = probe.and_then(|p| p.http_get).expect("an HTTP probe");
            assert_eq!(get.port, IntOrString::String("admin".into()));
        }
        let sc = c.security_context.unwrap();
        assert_eq!((sc.run_as_non_root, sc.read_only_root_filesystem), (Some(true), Some(true)));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert!(c.resources.unwrap().limits.unwrap().contains_key("memory"));
    }

    #[test]
    fn the_tree_starts_with_the_name() {
        let Node::Map(entries) = spec().node().unwrap() else { panic!("not a map") };
        assert_eq!(entries[0], ("name".to_owned(), Node::Str(SIDECAR_NAME.to_owned())));
    }
}
