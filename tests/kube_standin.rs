//! The API stand-in speaks the Kubernetes list/watch protocol as the real API server does.

use std::time::Duration;

use bytes::Bytes;
use hello_sidecar::kube_standin::{
    StandIn,
    controller::{Controller, Phase, Pod},
};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::Value;

const BASE: &str = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices";

async fn get(api: &StandIn, path_and_query: &str) -> (u16, String) {
    let tcp = tokio::net::TcpStream::connect(api.addr()).await.expect("connect");
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.expect("handshake");
    tokio::spawn(conn);
    let req = http::Request::get(path_and_query).header("host", "standin").body(Empty::<Bytes>::new()).expect("req");
    let res = tx.send_request(req).await.expect("response");
    let status = res.status().as_u16();
    let body = tokio::time::timeout(Duration::from_secs(10), res.into_body().collect()).await.expect("body ends");
    (status, String::from_utf8_lossy(&body.map(|b| b.to_bytes()).unwrap_or_default()).into_owned())
}

fn events(body: &str) -> Vec<Value> {
    body.lines().map(|l| serde_json::from_str(l).expect("one JSON event per line")).collect()
}

async fn with_pods(n: u8) -> (StandIn, Controller, Vec<Pod>) {
    let api = StandIn::start(([127, 0, 0, 1], 0).into()).await.expect("start");
    let mut c = Controller::new("hello", "default", "grpc", 8080);
    let pods: Vec<Pod> =
        (0..n).map(|i| Pod { name: format!("p{i}"), ip: [10, 0, 0, i + 1].into(), phase: Phase::Ready }).collect();
    c.publish(&api, &pods);
    (api, c, pods)
}

#[tokio::test]
async fn list_pages_with_limit_and_continue_and_filters_by_label() {
    let (api, _, _) = with_pods(250).await;
    let sel = "labelSelector=kubernetes.io%2Fservice-name%3Dhello";
    let (code, body) = get(&api, &format!("{BASE}?&{sel}&limit=2")).await;
    assert_eq!(code, 200);
    let page: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(page["kind"], "EndpointSliceList");
    assert_eq!(page["items"].as_array().map(Vec::len), Some(2));
    let token = page["metadata"]["continue"].as_str().expect("a continue token").to_owned();
    assert!(page["metadata"]["resourceVersion"].as_str().is_some_and(|rv| !rv.is_empty()));
    let (_, body) = get(&api, &format!("{BASE}?{sel}&limit=2&continue={token}")).await;
    let rest: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(rest["items"].as_array().map(Vec::len), Some(1), "3 slices for 250 pods");
    assert!(rest["metadata"].get("continue").is_none());
    let (_, none) = get(&api, &format!("{BASE}?labelSelector=kubernetes.io%2Fservice-name%3Dother")).await;
    assert_eq!(serde_json::from_str::<Value>(&none).expect("json")["items"].as_array().map(Vec::len), Some(0));
}

#[tokio::test]
async fn watch_resumes_from_a_resource_version_and_ends_at_its_timeout() {
    let (api, mut c, mut pods) = with_pods(2).await;
    let (_, list) = get(&api, BASE).await;
    let rv: u64 = serde_json::from_str::<Value>(&list).expect("json")["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("rv");
    pods[0].phase = Phase::Terminating;
    c.publish(&api, &pods);
    let (code, body) = get(&api, &format!("{BASE}?&watch=true&timeoutSeconds=1&resourceVersion={rv}")).await;
    assert_eq!(code, 200);
    let evs = events(&body);
    assert_eq!(evs.len(), 1, "only what happened after {rv}: {evs:?}");
    assert_eq!(evs[0]["type"], "MODIFIED");
    let new_rv: u64 =
        evs[0]["object"]["metadata"]["resourceVersion"].as_str().and_then(|s| s.parse().ok()).expect("rv");
    assert!(new_rv > rv);
}

#[tokio::test]
async fn an_expired_resource_version_is_a_410_inside_a_200_stream() {
    let (api, mut c, pods) = with_pods(1).await;
    c.publish(&api, &pods);
    api.compact();
    let (code, body) = get(&api, &format!("{BASE}?watch=true&resourceVersion=1")).await;
    assert_eq!(code, 200, "the real API server does not answer HTTP 410 here");
    let evs = events(&body);
    assert_eq!(evs[0]["type"], "ERROR");
    assert_eq!(evs[0]["object"]["kind"], "Status");
    assert_eq!(evs[0]["object"]["code"], 410);
    assert_eq!(evs[0]["object"]["reason"], "Expired");
}

#[tokio::test]
async fn bookmarks_come_when_asked_for() {
    let (api, _, _) = with_pods(1).await;
    let (_, body) =
        get(&api, &format!("{BASE}?watch=true&timeoutSeconds=2&allowWatchBookmarks=true&resourceVersion=2")).await;
    let evs = events(&body);
    assert!(
        evs.iter().any(|e| e["type"] == "BOOKMARK" && e["object"]["metadata"]["resourceVersion"].is_string()),
        "{evs:?}"
    );
    let (_, quiet) = get(&api, &format!("{BASE}?watch=true&timeoutSeconds=2&resourceVersion=2")).await;
    assert!(events(&quiet).iter().all(|e| e["type"] != "BOOKMARK"));
}

#[tokio::test]
async fn injected_failures_and_bad_requests_are_kubernetes_statuses() {
    let (api, _, _) = with_pods(1).await;
    api.fail_next(2);
    for _ in 0..2 {
        let (code, body) = get(&api, BASE).await;
        assert_eq!(code, 500);
        assert_eq!(serde_json::from_str::<Value>(&body).expect("json")["kind"], "Status");
    }
    assert_eq!(get(&api, BASE).await.0, 200);
    assert_eq!(get(&api, "/apis/discovery.k8s.io/v1/namespaces/default/pods").await.0, 404);
    assert_eq!(get(&api, &format!("{BASE}?labelSelector=a%20b")).await.0, 400);
}

#[tokio::test]
async fn refusals_are_kubernetes_statuses_until_lifted() {
    use hello_sidecar::kube_standin::Refusal;
    let (api, _, _) = with_pods(1).await;
    api.refuse(Some(Refusal::Forbidden));
    let (code, body) = get(&api, BASE).await;
    assert_eq!(code, 403);
    let status: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(status["reason"], "Forbidden");
    assert!(status["message"].as_str().is_some_and(|m| m.contains("cannot list resource \"endpointslices\"")));
    let (code, _) = get(&api, &format!("{BASE}?watch=true&resourceVersion=2")).await;
    assert_eq!(code, 403, "watches are refused too");

    api.refuse(Some(Refusal::Throttled { retry_after: 3 }));
    let tcp = tokio::net::TcpStream::connect(api.addr()).await.expect("connect");
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.expect("handshake");
    tokio::spawn(conn);
    let req = http::Request::get(BASE).header("host", "standin").body(Empty::<Bytes>::new()).expect("req");
    let res = tx.send_request(req).await.expect("response");
    assert_eq!(res.status().as_u16(), 429);
    assert_eq!(res.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("3"));
    let body = res.into_body().collect().await.expect("body").to_bytes();
    let status: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(status["details"]["retryAfterSeconds"], 3);
    assert_eq!(status["reason"], "TooManyRequests");

    api.refuse(None);
    assert_eq!(get(&api, BASE).await.0, 200);
    // The older controls still work alongside.
    api.fail_next(1);
    assert_eq!(get(&api, BASE).await.0, 500);
    assert_eq!(get(&api, BASE).await.0, 200);
}

fn rv_of(e: &Value) -> u64 {
    e["object"]["metadata"]["resourceVersion"].as_str().and_then(|s| s.parse().ok()).expect("a resourceVersion")
}

/// A bookmark says "you have seen everything up to here": a client that resumes from it skips every event at or
/// before it. The stand-in stamped bookmarks with the store's newest resourceVersion even while events up to it
/// were still queued for the stream, so a watch cut just after such a bookmark lost them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookmarks_never_run_ahead_of_the_events_sent() {
    let (api, c, pods) = with_pods(1).await;
    let api = std::sync::Arc::new(api);
    let (_, list) = get(&api, BASE).await;
    let from: u64 = serde_json::from_str::<Value>(&list).expect("json")["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("rv");
    let slice = c.slices(&pods).remove(0);
    let writer = {
        let api = api.clone();
        tokio::spawn(async move {
            let end = std::time::Instant::now() + Duration::from_millis(3500);
            while std::time::Instant::now() < end {
                for _ in 0..50 {
                    api.put_slice(&slice);
                }
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    };
    let (_, body) =
        get(&api, &format!("{BASE}?watch=true&timeoutSeconds=3&allowWatchBookmarks=true&resourceVersion={from}")).await;
    let _ = writer.await;
    let mut seen = from;
    let mut bookmarks = 0;
    for e in events(&body) {
        if e["type"] == "BOOKMARK" {
            bookmarks += 1;
            assert!(rv_of(&e) <= seen, "a bookmark at {} before the event at {} was sent", rv_of(&e), seen + 1);
        } else {
            seen = rv_of(&e);
        }
    }
    assert!(bookmarks >= 2, "{bookmarks} bookmarks");
}

/// A slice whose labels stop matching a watch's selector leaves that watch with DELETED, and one that starts
/// matching arrives with ADDED, as the API server's watch cache sends them: a client filtering by
/// `kubernetes.io/service-name` never holds a slice that is no longer its Service's.
#[tokio::test]
async fn a_slice_relabelled_out_of_the_selector_is_deleted_for_the_watch() {
    let (api, c, pods) = with_pods(1).await;
    let (_, list) = get(&api, BASE).await;
    let from: u64 = serde_json::from_str::<Value>(&list).expect("json")["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("rv");
    let mut slice = c.slices(&pods).remove(0);
    let labels = slice.metadata.labels.as_mut().expect("labels");
    labels.insert("kubernetes.io/service-name".into(), "other".into());
    api.put_slice(&slice);
    let labels = slice.metadata.labels.as_mut().expect("labels");
    labels.insert("kubernetes.io/service-name".into(), "hello".into());
    api.put_slice(&slice);
    let sel = "labelSelector=kubernetes.io%2Fservice-name%3Dhello";
    let (_, body) = get(&api, &format!("{BASE}?watch=true&timeoutSeconds=1&{sel}&resourceVersion={from}")).await;
    let kinds: Vec<String> = events(&body).iter().map(|e| e["type"].as_str().unwrap_or("").to_owned()).collect();
    assert_eq!(kinds, ["DELETED", "ADDED"], "{body}");
}
