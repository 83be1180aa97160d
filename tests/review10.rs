//! Review 10: failing tests found by trying the balancing/discovery claims through real processes.

mod common;

use std::time::Duration;

use common::{cluster::*, *};
use hello_sidecar::kube_standin::controller::Phase;

/// Issue 16.8 ("one log line per change of state, no false recovery") and the `/ready` body: after an API outage
/// during the watch, the watch resumes from its resourceVersion (no re-list, no event when nothing changed), and
/// discovery must then say it works again. It never does until some slice changes: `hello_sidecar_discovery_failing`
/// stays 1, `/ready` keeps naming the outage and calls that find no endpoint would still be told of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_watch_outage_discovery_recovers_without_a_slice_change() {
    let mut c = KubeCluster::new().await;
    for _ in 0..2 {
        c.add_pod(Phase::Ready);
    }
    let sidecar = c.sidecar(&[]);
    sidecar.wait_ready_endpoints(2);
    c.api.down();
    c.api.drop_watches();
    wait_for("discovery to report the outage", Duration::from_secs(20), || {
        (metric(&sidecar.metrics(), "hello_sidecar_discovery_failing") == 1).then_some(())
    });
    let watches = c.api.watches();
    c.api.up().await.expect("the API comes back");
    wait_for("the watch to resume", Duration::from_secs(40), || (c.api.watches() > watches).then_some(()));
    let recovered = wait_for_opt(Duration::from_secs(15), || {
        (metric(&sidecar.metrics(), "hello_sidecar_discovery_failing") == 0).then_some(())
    });
    let (_, body) = http_get_any(sidecar.admin, "/ready").expect("/ready");
    assert!(recovered.is_some(), "the watch resumed 15 s ago, yet discovery still reports a problem; /ready: {body}");
}

fn wait_for_opt<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = std::time::Instant::now() + limit;
    while std::time::Instant::now() < end {
        if let Some(v) = f() {
            return Some(v);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}
