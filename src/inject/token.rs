//! The sidecar's API credentials in a pod that turns the service-account token off
//! (`automountServiceAccountToken: false`, a common hardening): the sidecar still needs them to watch
//! EndpointSlices, so it alone gets a projected token, as `linkerd inject` does for its proxy. The volume is
//! what the kubelet mounts when the token is on (the `kube-api-access-*` volume: a bound token, the cluster CA
//! from `kube-root-ca.crt` and the namespace; KEP-1205), at the path in-cluster clients read.

use k8s_openapi::api::core::v1::{
    ConfigMapProjection, DownwardAPIProjection, DownwardAPIVolumeFile, KeyToPath, ObjectFieldSelector,
    ProjectedVolumeSource, ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};

use super::yaml::Node;

/// Name of the volume `inject` adds (and `--uninject` removes).
pub const VOLUME_NAME: &str = "hello-sidecar-kube-api-access";

/// Where in-cluster clients (kube-rs, client-go) read the token, CA and namespace.
pub const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// True when the pod spec turns the automatic token off.
pub fn automount_off(pod_spec: &Node) -> bool {
    pod_spec.get("automountServiceAccountToken") == Some(&Node::Bool(false))
}

/// The projected volume, as the kubelet's own (token valid an hour and refreshed by the kubelet).
pub fn volume() -> Result<Node, serde_json::Error> {
    Node::from_serialize(&Volume {
        name: VOLUME_NAME.to_owned(),
        projected: Some(ProjectedVolumeSource {
            default_mode: Some(0o444),
            sources: Some(vec![
                VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        expiration_seconds: Some(3607),
                        path: "token".to_owned(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                VolumeProjection {
                    config_map: Some(ConfigMapProjection {
                        name: "kube-root-ca.crt".to_owned(),
                        items: Some(vec![KeyToPath {
                            key: "ca.crt".to_owned(),
                            path: "ca.crt".to_owned(),
                            ..Default::default()
                        }]),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                VolumeProjection {
                    downward_api: Some(DownwardAPIProjection {
                        items: Some(vec![DownwardAPIVolumeFile {
                            path: "namespace".to_owned(),
                            field_ref: Some(ObjectFieldSelector {
                                api_version: Some("v1".to_owned()),
                                field_path: "metadata.namespace".to_owned(),
                            }),
                            ..Default::default()
                        }]),
                    }),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The sidecar's mount of [`volume`].
pub fn mount() -> Result<Node, serde_json::Error> {
    Node::from_serialize(&VolumeMount {
        name: VOLUME_NAME.to_owned(),
        mount_path: MOUNT_PATH.to_owned(),
        read_only: Some(true),
        ..Default::default()
    })
}

/// Adds (or replaces) the volume in a pod spec and the mount in `sidecar`.
pub fn add(pod_spec: &mut Node, sidecar: &mut Node) -> Result<(), String> {
    let (volume, mount) = (volume().map_err(|e| e.to_string())?, mount().map_err(|e| e.to_string())?);
    if pod_spec.get("volumes").is_none_or(|n| *n == Node::Null) {
        pod_spec.insert("volumes", Node::Seq(Vec::new()));
    }
    let Some(Node::Seq(volumes)) = pod_spec.get_mut("volumes") else {
        return Err("volumes is not a list".to_owned());
    };
    match volumes.iter().position(is_ours) {
        Some(i) => volumes[i] = volume,
        None => volumes.push(volume),
    }
    sidecar.insert("volumeMounts", Node::Seq(vec![mount]));
    Ok(())
}

/// Removes the volume from a pod spec (and a `volumes` list left empty); `true` if it was there.
pub fn remove(pod_spec: &mut Node) -> bool {
    let Some(Node::Seq(volumes)) = pod_spec.get_mut("volumes") else {
        return false;
    };
    let before = volumes.len();
    volumes.retain(|v| !is_ours(v));
    let removed = volumes.len() != before;
    if removed && volumes.is_empty() {
        pod_spec.remove("volumes");
    }
    removed
}

fn is_ours(volume: &Node) -> bool {
    volume.get("name").and_then(Node::as_str) == Some(VOLUME_NAME)
}
