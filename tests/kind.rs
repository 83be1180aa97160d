//! The kind tier: the same scenarios as the local tier, against a real cluster. Ignored by `cargo test`;
//! `e2e/run.sh` creates the cluster, installs the chart and runs these with `-- --ignored`.

mod common;

use common::{cluster::Cluster, kind::KindCluster, scenarios};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a kind cluster: run e2e/run.sh"]
async fn kind_scenarios_in_order() {
    let mut c = KindCluster::from_env();
    c.scale(3);
    scenarios::spread(&mut c).await;
    scenarios::scale_up(&mut c, 5).await;
    scenarios::scale_down(&mut c, 2).await;
    scenarios::rolling_restart(&mut c).await;
    scenarios::pod_delete(&mut c).await;
    scenarios::spread(&mut c).await;
}
