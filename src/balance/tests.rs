//! The balancer over real connections: a target larger than the connect bound.

use std::convert::Infallible;

use http_body_util::Empty;
use hyper::{Response, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::*;

/// A target with more endpoints than connection attempts may run at once ([`pool::MAX_CONNECTING`]): the whole set
/// is the balancer's at once, and every endpoint still connects (each attempt returns its permit; a leaked one
/// would stall the rest at 64). `any_ready` follows the connections up and down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_of_a_target_larger_than_the_connect_bound_connects() {
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let svc = service_fn(|_req| async { Ok::<_, Infallible>(Response::new(String::new())) });
            let conn =
                hyper::server::conn::http2::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(tcp), svc);
            tokio::spawn(conn);
        }
    });
    let settings = Settings { pool: pool::Settings::default(), eject_after: 5, ewma_decay: Duration::from_secs(10) };
    let balancer: Balancer<Empty<bytes::Bytes>> = Balancer::new("t".into(), settings, Arc::new(Metrics::default()));
    assert!(!balancer.any_ready());
    let n = pool::MAX_CONNECTING * 3;
    let addrs = (0..n).map(|i| SocketAddr::from(([127, 0, 31, i as u8 + 1], port)));
    balancer.update(addrs.map(Discovered::addr).collect());
    assert_eq!(balancer.snapshot().len(), n);
    let deadline = Instant::now() + Duration::from_secs(60);
    while balancer.ready_count() < n {
        assert!(Instant::now() < deadline, "{} of {n} endpoints connected", balancer.ready_count());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(balancer.any_ready());
    // Every endpoint retired: none is ready, and the count says so without a scan.
    balancer.update(Vec::new());
    assert!(!balancer.shared.maybe_ready(), "retired connections still counted as ready");
    assert!(!balancer.any_ready());
}
