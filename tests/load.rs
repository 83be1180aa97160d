//! The sidecar under sustained and hostile load from the app side: calls abandoned mid-flight, connections opened
//! and dropped by the thousand, messages at and past the size limit, backends killed under load. What must hold is
//! correctness, never speed: every backend stream of an abandoned call is reset, every slot and lease comes back,
//! memory and file descriptors return near their baseline. Bounds on RSS and fds are generous (a leak grows with
//! the load; a few MiB of allocator slack does not).

mod common;

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use common::{
    Backend, Sidecar,
    echo::EchoBackend,
    grpc_frame,
    h2peer::{h2_client_task, rss_kib},
    hello_request, metric, metric_max, wait_for,
};
use http::Request;
use tokio::net::TcpStream;

/// A SayHello request the backend fixture holds for `delay` (`x-hello-delay`), under a deadline far past the test's
/// own waits, so that only a reset from the sidecar can end it early.
fn slow_hello(addr: SocketAddr, delay: &str) -> Request<()> {
    Request::post(format!("http://{addr}/hello.v1.HelloService/SayHello"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "120S")
        .header("x-hello-delay", delay)
        .body(())
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Sends `req` with one `HelloRequest` on `tx`; returns the response future and the (finished) request stream.
async fn send(
    tx: &mut h2::client::SendRequest<Bytes>,
    req: Request<()>,
) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
    *tx = tx.clone().ready().await.unwrap_or_else(|e| panic!("connection not ready: {e}"));
    let (res, mut body) = tx.send_request(req, false).unwrap_or_else(|e| panic!("send: {e}"));
    body.send_data(Bytes::from(grpc_frame(&hello_request("load"))), true).unwrap_or_else(|e| panic!("body: {e}"));
    (res, body)
}

/// Open file descriptors of a process (`/proc/PID/fd`).
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Calls the sidecar has in flight to endpoints (every target).
fn in_flight(sidecar: &Sidecar) -> u64 {
    metric_max(&sidecar.metrics(), "hello_sidecar_calls_in_flight")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_calls_the_app_abandons_reset_the_backend_stream_and_free_their_slot() {
    let backend = Backend::start("abandoned-unary", &[]);
    let sidecar = Sidecar::start(&Sidecar::static_target(&[&backend]), &["--max-concurrent-calls", "20"]);
    sidecar.wait_ready_endpoints(1);
    let addr = sidecar.addr;

    // Ten calls the app resets (RST_STREAM CANCEL), ten on a connection the app drops.
    let (mut a, _a_task) = h2_client_task(addr).await;
    let (mut b, b_task) = h2_client_task(addr).await;
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(send(&mut a, slow_hello(addr, "1h")).await);
        held.push(send(&mut b, slow_hello(addr, "1h")).await);
    }
    wait_for("20 calls in flight", Duration::from_secs(20), || (in_flight(&sidecar) == 20).then_some(()));
    // The limit is full: one more is refused.
    let (res, _body) = send(&mut a, slow_hello(addr, "0s")).await;
    let reply = common::h2peer::read_reply(res).await.expect("refused call");
    assert_eq!(reply.grpc_status, Some(tonic::Code::ResourceExhausted as i32), "{reply:?}");

    let (on_a, on_b): (Vec<_>, Vec<_>) = held.into_iter().enumerate().partition(|(i, _)| i % 2 == 0);
    drop(on_a);
    b_task.abort();
    drop(on_b);

    // Only the sidecar resetting each backend stream can end the handler's hour-long delay.
    wait_for("the backend saw 20 calls cancelled", Duration::from_secs(20), || {
        let m = common::http_get(backend.admin, "/metrics")?;
        (metric(&m, "hello_server_calls_cancelled_total") == 20).then_some(())
    });
    wait_for("no call in flight", Duration::from_secs(20), || (in_flight(&sidecar) == 0).then_some(()));
    let m = sidecar.metrics();
    assert_eq!(
        metric(
            &m,
            "hello_sidecar_requests_total{method=\"/hello.v1.HelloService/SayHello\",grpc_status=\"CANCELLED\"}"
        ),
        20,
        "{m}"
    );

    // Every slot came back: the limit's worth of calls at once all succeed.
    let mut calls = Vec::new();
    for _ in 0..20 {
        calls.push(send(&mut a, slow_hello(addr, "300ms")).await.0);
    }
    for res in calls {
        let reply = common::h2peer::read_reply(res).await.expect("reply");
        assert_eq!(reply.grpc_status, Some(0), "{reply:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_the_app_abandons_reset_the_backend_stream_and_leave_nothing_behind() {
    use common::echo::pb::{EchoRequest, echo_service_client::EchoServiceClient};
    let echo = EchoBackend::start("abandoned-stream").await;
    let route = format!("echo.v1.EchoService=static:///{}", echo.addr);
    let backend = Backend::start("unused", &[]);
    let sidecar = Sidecar::start(&Sidecar::static_target(&[&backend]), &["--route", &route]);
    sidecar.wait_ready_endpoints(2);

    let endpoint = format!("http://{}", sidecar.addr);
    // Server streams the app stops reading after two messages and drops; on its shared connection, and each on a
    // connection of its own that it then closes.
    let shared =
        tonic::transport::Endpoint::from_shared(endpoint.clone()).expect("uri").connect().await.expect("connect");
    let mut streams = Vec::new();
    for i in 0..20 {
        let channel = if i % 2 == 0 {
            shared.clone()
        } else {
            tonic::transport::Endpoint::from_shared(endpoint.clone()).expect("uri").connect().await.expect("connect")
        };
        let mut client = EchoServiceClient::new(channel);
        let req = EchoRequest { message: format!("s{i}"), count: 100_000, delay_ms: 5 };
        let mut stream = client.server_stream(req).await.expect("stream").into_inner();
        for _ in 0..2 {
            stream.message().await.expect("message").expect("one");
        }
        streams.push((client, stream));
    }
    // Bidi streams the app leaves half-way (its request side still open).
    let mut bidis = Vec::new();
    for i in 0..10 {
        let mut client = EchoServiceClient::new(shared.clone());
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(EchoRequest { message: format!("b{i}"), count: 0, delay_ms: 0 }).await.expect("send");
        let mut replies =
            client.bidi(tokio_stream::wrappers::ReceiverStream::new(rx)).await.expect("bidi").into_inner();
        replies.message().await.expect("reply").expect("one");
        bidis.push((client, tx, replies));
    }
    wait_for("30 calls in flight", Duration::from_secs(20), || (in_flight(&sidecar) == 30).then_some(()));
    drop(streams);
    drop(bidis);
    drop(shared);

    wait_for("the backend saw every server stream cancelled", Duration::from_secs(20), || {
        (echo.stats.cancelled.load(std::sync::atomic::Ordering::SeqCst) == 20).then_some(())
    });
    wait_for("no call in flight", Duration::from_secs(20), || (in_flight(&sidecar) == 0).then_some(()));
}

/// One SayHello with `name` on a fresh connection; what came back, or `None` if the connection failed.
async fn one_call(addr: SocketAddr, name: &str, deadline: &str) -> Option<common::h2peer::Reply> {
    let tcp = TcpStream::connect(addr).await.ok()?;
    let (mut tx, conn) = h2::client::handshake(tcp).await.ok()?;
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = Request::post(format!("http://{addr}/hello.v1.HelloService/SayHello"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", deadline)
        .body(())
        .ok()?;
    tx = tx.ready().await.ok()?;
    let (res, mut body) = tx.send_request(req, false).ok()?;
    body.send_data(Bytes::from(grpc_frame(&hello_request(name))), true).ok()?;
    let reply = common::h2peer::read_reply(res).await.ok();
    drop(tx);
    task.abort();
    reply
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_app_connections_opened_and_dropped_leak_no_fds_or_memory() {
    let backend = Backend::start("churn", &[]);
    let sidecar = Sidecar::start(&Sidecar::static_target(&[&backend]), &[]);
    sidecar.wait_ready_endpoints(1);
    let (addr, pid) = (sidecar.addr, sidecar.proc.child.id());

    // Each round: 400 connections, 50 at a time, in four ways an app leaves: after its call, mid-call (the socket
    // closed under a call in flight), before any HTTP/2 (TCP only), and half-way through the preface.
    let round = || async move {
        let mut ok = 0;
        for batch in 0..8 {
            let mut tasks = Vec::new();
            for i in 0..50 {
                tasks.push(tokio::spawn(async move {
                    match (batch * 50 + i) % 4 {
                        0 => one_call(addr, "churn", "10S").await.is_some_and(|r| r.grpc_status == Some(0)),
                        1 => {
                            let (mut tx, task) = h2_client_task(addr).await;
                            let held = send(&mut tx, slow_hello(addr, "1h")).await;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            task.abort();
                            drop(held);
                            false
                        }
                        2 => {
                            drop(TcpStream::connect(addr).await);
                            false
                        }
                        _ => {
                            use tokio::io::AsyncWriteExt;
                            if let Ok(mut s) = TcpStream::connect(addr).await {
                                let _ = s.write_all(b"PRI * HTTP/2.0\r\n").await;
                            }
                            false
                        }
                    }
                }));
            }
            for t in tasks {
                ok += usize::from(t.await.expect("task"));
            }
        }
        ok
    };
    // A warm-up round grows the allocator's arenas and the pool to their working size.
    assert_eq!(round().await, 100);
    let settled = |what: &str| {
        wait_for(what, Duration::from_secs(20), || (in_flight(&sidecar) == 0).then_some(()));
        std::thread::sleep(Duration::from_millis(500));
        (fds(pid), rss_kib(pid))
    };
    let (fds0, rss0) = settled("warm-up calls ended");
    for _ in 0..4 {
        assert_eq!(round().await, 100, "every completed call succeeded");
    }
    let (fds1, rss1) = wait_for("connections closed", Duration::from_secs(20), || {
        let (f, r) = settled("load calls ended");
        (f <= fds0 + 5).then_some((f, r))
    });
    // 1,600 more connections and 400 more abandoned calls: a leak of even 20 KiB each would show.
    assert!(rss1 <= rss0 + 16 * 1024, "RSS grew from {rss0} KiB to {rss1} KiB (fds {fds0} → {fds1})");
    // Every call that reached the backend was answered (the 500 that succeeded) or reset by the sidecar; none is
    // left holding a handler for its hour.
    wait_for("every abandoned call that reached the backend reset", Duration::from_secs(20), || {
        let m = common::http_get(backend.admin, "/metrics")?;
        let (calls, cancelled) =
            (metric(&m, "hello_server_calls_total"), metric(&m, "hello_server_calls_cancelled_total"));
        (calls >= 500 && calls - cancelled == 500 && cancelled > 0).then_some(())
    });
}

/// A SayHello request on `addr` whose body is `body`, as is (any framing), under a 120 s deadline; its request
/// stream (open unless `end`) is kept in `keep`.
async fn raw_call(
    tx: &mut h2::client::SendRequest<Bytes>,
    addr: SocketAddr,
    body: Vec<u8>,
    end: bool,
    keep: &mut Vec<h2::SendStream<Bytes>>,
) -> h2::client::ResponseFuture {
    *tx = tx.clone().ready().await.unwrap_or_else(|e| panic!("connection not ready: {e}"));
    let (res, mut stream) = tx.send_request(slow_hello(addr, "0s"), false).unwrap_or_else(|e| panic!("send: {e}"));
    stream.send_data(Bytes::from(body), end).unwrap_or_else(|e| panic!("body: {e}"));
    keep.push(stream);
    res
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_at_the_limit_pass_both_ways_and_past_it_are_refused_alone() {
    use hello_sidecar::pb::HelloResponse;
    use prost::Message;
    let backend = Backend::start("large", &[]);
    let sidecar = Sidecar::start(&Sidecar::static_target(&[&backend]), &[]);
    sidecar.wait_ready_endpoints(1);
    let addr = sidecar.addr;
    let (mut tx, _task) = h2_client_task(addr).await;

    // A HelloRequest of exactly 4 MiB (the sidecar's default limit, and the backend's), one a byte over it, and one
    // whose frame header claims 4 GiB but sends a few bytes and keeps the stream open; with ordinary calls between.
    const LIMIT: usize = 4 << 20;
    let name = |encoded: usize| "x".repeat(encoded - 5);
    let at = hello_request(&name(LIMIT));
    assert_eq!(at.len(), LIMIT);
    let over = hello_request(&name(LIMIT + 1));
    let mut huge = vec![0, 0xff, 0xff, 0xff, 0xff];
    huge.extend_from_slice(b"abc");

    let mut keep = Vec::new();
    let at_limit = [
        raw_call(&mut tx, addr, grpc_frame(&at), true, &mut keep).await,
        raw_call(&mut tx, addr, grpc_frame(&at), true, &mut keep).await,
    ];
    let small = raw_call(&mut tx, addr, grpc_frame(&hello_request("small")), true, &mut keep).await;
    let over = raw_call(&mut tx, addr, grpc_frame(&over), true, &mut keep).await;
    let huge = raw_call(&mut tx, addr, huge, false, &mut keep).await;
    let after = raw_call(&mut tx, addr, grpc_frame(&hello_request("after")), true, &mut keep).await;

    let read = |res| async move {
        let reply = tokio::time::timeout(Duration::from_secs(60), common::h2peer::read_reply(res))
            .await
            .expect("an answer long before the 120 s deadline");
        reply.expect("a response, not a reset")
    };
    for res in at_limit {
        let reply = read(res).await;
        assert_eq!(reply.grpc_status, Some(0), "{:?} {}", reply.grpc_status, reply.grpc_message);
        let msg = HelloResponse::decode(&reply.data[5..]).expect("decode");
        assert_eq!(msg.message.len(), LIMIT - 5 + "Hello, !".len(), "the whole answer, over 4 MiB, came back");
    }
    for (what, res) in [("over", over), ("4 GiB", huge)] {
        let reply = read(res).await;
        assert_eq!(reply.grpc_status, Some(tonic::Code::ResourceExhausted as i32), "{what}: {}", reply.grpc_message);
    }
    for res in [small, after] {
        let reply = read(res).await;
        assert_eq!(reply.grpc_status, Some(0), "{}", reply.grpc_message);
    }
    wait_for("no call in flight", Duration::from_secs(20), || (in_flight(&sidecar) == 0).then_some(()));
    // The connection carries on.
    let res = raw_call(&mut tx, addr, grpc_frame(&hello_request("later")), true, &mut keep).await;
    assert_eq!(read(res).await.grpc_status, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_killed_and_restarted_under_load_answer_every_call_and_the_pool_recovers() {
    let ips = [common::fresh_ip(), common::fresh_ip()];
    let mut pods = [Backend::start_at(ips[0], "restart-a", &[]), Backend::start_at(ips[1], "restart-b", &[])];
    let sidecar = Sidecar::start(&Sidecar::static_target(&[&pods[0], &pods[1]]), &[]);
    sidecar.wait_ready_endpoints(2);
    let addr = sidecar.addr;

    // 16 workers, each on its own connection, calls with a 2 s deadline (some held 0–300 ms by the backend) until
    // told to stop. A call must end with a status by its deadline (plus slack for a loaded machine), never hang.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..16u32 {
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let (mut tx, _task) = h2_client_task(addr).await;
            let mut codes = std::collections::BTreeMap::<i32, usize>::new();
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let mut req = slow_hello(addr, &format!("{}ms", (n * 37 + w * 11) % 300));
                req.headers_mut().insert("grpc-timeout", http::HeaderValue::from_static("2S"));
                let (res, _body) = send(&mut tx, req).await;
                let reply = tokio::time::timeout(Duration::from_secs(10), common::h2peer::read_reply(res))
                    .await
                    .expect("an answer by the deadline");
                let reply = reply.unwrap_or_else(|e| panic!("the sidecar reset the call: {e}"));
                *codes.entry(reply.grpc_status.unwrap_or(-1)).or_default() += 1;
            }
            codes
        }));
    }
    let served = |pod: &Backend| {
        metric(&common::http_get(pod.admin, "/metrics").unwrap_or_default(), "hello_server_calls_total")
    };
    for round in 0..2 {
        for i in 0..2 {
            wait_for("calls reach the pod", Duration::from_secs(20), || (served(&pods[i]) >= 20).then_some(()));
            pods[i].proc.kill();
            tokio::time::sleep(Duration::from_millis(300)).await;
            let id = format!("restart-{i}-{round}");
            pods[i] = Backend::start_at(ips[i], &id, &[]);
        }
    }
    wait_for("both pods serve again", Duration::from_secs(30), || {
        (served(&pods[0]) >= 20 && served(&pods[1]) >= 20).then_some(())
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut codes = std::collections::BTreeMap::<i32, usize>::new();
    for w in workers {
        for (code, n) in w.await.expect("worker") {
            *codes.entry(code).or_default() += n;
        }
    }
    // Killed mid-call: UNAVAILABLE (or, on a machine too loaded to keep up, DEADLINE_EXCEEDED). Nothing else but OK.
    let allowed = [0, tonic::Code::Unavailable as i32, tonic::Code::DeadlineExceeded as i32];
    assert!(codes.keys().all(|c| allowed.contains(c)), "{codes:?}");
    assert!(codes.get(&0).copied().unwrap_or(0) > 100, "{codes:?}");
    wait_for("no call in flight", Duration::from_secs(20), || (in_flight(&sidecar) == 0).then_some(()));
    // Every call in flight on a killed pod failed at once, so both pods may have been ejected (the balancer then
    // still picks among them); calls find them healthy and bring both back, each after one probe.
    let client = sidecar.client();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let after = common::calls(&client, 8, 4, Some(Duration::from_secs(5))).await;
        assert!(after.iter().all(|o| o.code == tonic::Code::Ok), "{after:?}");
        if metric(&sidecar.metrics(), "hello_sidecar_endpoints{state=\"ready\"}") == 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "both endpoints ready again: {}", sidecar.metrics());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedged_calls_the_app_abandons_reset_every_attempt() {
    let pods = [Backend::start("hedge-abandon-a", &[]), Backend::start("hedge-abandon-b", &[])];
    let config = r#"{"methodConfig": [{"name": [{"service": "hello.v1.HelloService"}],
        "hedgingPolicy": {"maxAttempts": 2, "hedgingDelay": "0.05s"}}]}"#;
    let target = Sidecar::static_target(&[&pods[0], &pods[1]]);
    let sidecar = Sidecar::start(&target, &["--service-config", config, "--max-concurrent-calls", "10"]);
    sidecar.wait_ready_endpoints(2);
    let addr = sidecar.addr;
    let cancelled = || -> u64 {
        pods.iter()
            .map(|p| {
                metric(&common::http_get(p.admin, "/metrics").unwrap_or_default(), "hello_server_calls_cancelled_total")
            })
            .sum()
    };

    let (mut a, _a_task) = h2_client_task(addr).await;
    let (mut b, b_task) = h2_client_task(addr).await;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(send(&mut a, slow_hello(addr, "1h")).await);
        held.push(send(&mut b, slow_hello(addr, "1h")).await);
    }
    wait_for("both attempts of 10 calls in flight", Duration::from_secs(20), || {
        (in_flight(&sidecar) == 20).then_some(())
    });
    let (on_a, on_b): (Vec<_>, Vec<_>) = held.into_iter().enumerate().partition(|(i, _)| i % 2 == 0);
    drop(on_a);
    b_task.abort();
    drop(on_b);
    wait_for("the backends saw all 20 attempts cancelled", Duration::from_secs(20), || {
        (cancelled() == 20).then_some(())
    });
    wait_for("no call in flight", Duration::from_secs(20), || (in_flight(&sidecar) == 0).then_some(()));
    // Every slot came back.
    let mut calls = Vec::new();
    for _ in 0..10 {
        calls.push(send(&mut a, slow_hello(addr, "100ms")).await.0);
    }
    for res in calls {
        let reply = common::h2peer::read_reply(res).await.expect("reply");
        assert_eq!(reply.grpc_status, Some(0), "{reply:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_web_and_connect_calls_the_app_abandons_reset_the_backend_stream() {
    use tokio::io::AsyncWriteExt;
    let backend = Backend::start("abandoned-web", &[]);
    let sidecar = Sidecar::start(&Sidecar::static_target(&[&backend]), &["--max-concurrent-calls", "8"]);
    sidecar.wait_ready_endpoints(1);
    let addr = sidecar.addr;
    let cancelled = || {
        metric(&common::http_get(backend.admin, "/metrics").unwrap_or_default(), "hello_server_calls_cancelled_total")
    };

    // Over HTTP/1.1 (a browser tab closed mid-call): grpc-web binary and text, Connect proto.
    let web = grpc_frame(&hello_request("web"));
    use base64::Engine;
    let text = base64::engine::general_purpose::STANDARD.encode(&web).into_bytes();
    let bodies = [
        ("application/grpc-web+proto", web.clone()),
        ("application/grpc-web-text", text),
        ("application/proto", hello_request("connect")),
    ];
    let mut sockets = Vec::new();
    for (content_type, body) in &bodies {
        for _ in 0..2 {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            let head = format!(
                "POST /hello.v1.HelloService/SayHello HTTP/1.1\r\nhost: app\r\ncontent-type: {content_type}\r\n\
                 x-hello-delay: 1h\r\ngrpc-timeout: 120S\r\nconnect-timeout-ms: 120000\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            s.write_all(head.as_bytes()).await.expect("head");
            s.write_all(body).await.expect("body");
            sockets.push(s);
        }
    }
    wait_for("6 calls in flight", Duration::from_secs(20), || (in_flight(&sidecar) == 6).then_some(()));
    drop(sockets);
    wait_for("the backend saw the 6 calls cancelled", Duration::from_secs(20), || (cancelled() == 6).then_some(()));
    wait_for("no call in flight", Duration::from_secs(20), || (in_flight(&sidecar) == 0).then_some(()));

    // Over HTTP/2: the same calls reset by the app.
    let (mut tx, _task) = h2_client_task(addr).await;
    let mut held = Vec::new();
    for (content_type, body) in &bodies {
        let mut req = slow_hello(addr, "1h");
        req.headers_mut().insert("content-type", http::HeaderValue::from_static(content_type));
        req.headers_mut().insert("connect-timeout-ms", http::HeaderValue::from_static("120000"));
        tx = tx.ready().await.expect("ready");
        let (res, mut stream) = tx.send_request(req, false).expect("send");
        stream.send_data(Bytes::from(body.clone()), true).expect("body");
        held.push((res, stream));
    }
    wait_for("3 calls in flight", Duration::from_secs(20), || (in_flight(&sidecar) == 3).then_some(()));
    drop(held);
    wait_for("the backend saw 3 more calls cancelled", Duration::from_secs(20), || (cancelled() == 9).then_some(()));
    wait_for("no call in flight", Duration::from_secs(20), || (in_flight(&sidecar) == 0).then_some(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_the_app_stops_reading_still_ends_at_its_deadline() {
    use prost::Message;
    let echo = EchoBackend::start("unread-deadline").await;
    let route = format!("echo.v1.EchoService=static:///{}", echo.addr);
    let backend = Backend::start("unused-deadline", &[]);
    let sidecar = Sidecar::start(&Sidecar::static_target(&[&backend]), &["--route", &route]);
    sidecar.wait_ready_endpoints(2);
    let addr = sidecar.addr;

    // Server streams of 1 KiB messages under a 2 s deadline, which the app never reads (nor resets): the stream
    // windows fill up and stay full.
    let (mut tx, _task) = h2_client_task(addr).await;
    let mut held = Vec::new();
    for i in 0..4 {
        let req = Request::post(format!("http://{addr}/echo.v1.EchoService/ServerStream"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("grpc-timeout", "2S")
            .body(())
            .expect("request");
        let msg = common::echo::pb::EchoRequest { message: "x".repeat(1024), count: 1_000_000, delay_ms: 0 };
        tx = tx.ready().await.expect("ready");
        let (res, mut body) = tx.send_request(req, false).expect("send");
        body.send_data(Bytes::from(grpc_frame(&msg.encode_to_vec())), true).expect("body");
        let res = res.await.unwrap_or_else(|e| panic!("stream {i}: {e}"));
        held.push((res, body));
    }
    wait_for("4 calls in flight", Duration::from_secs(20), || (in_flight(&sidecar) == 4).then_some(()));
    // The deadline is the sidecar's to keep: the backend's streams are reset and the calls end, whether or not
    // the app reads.
    wait_for("the backend's streams reset at the deadline", Duration::from_secs(20), || {
        (echo.stats.cancelled.load(std::sync::atomic::Ordering::SeqCst) == 4).then_some(())
    });
    wait_for("no call in flight", Duration::from_secs(20), || (in_flight(&sidecar) == 0).then_some(()));
    let m = sidecar.metrics();
    assert_eq!(
        metric(&m, "hello_sidecar_requests_total{method=\"/echo.v1.EchoService/*\",grpc_status=\"DEADLINE_EXCEEDED\"}"),
        4,
        "{m}"
    );
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_replies_the_app_never_reads_free_their_slots_at_the_deadline() {
    let backend = Backend::start("unread-unary", &[]);
    let sidecar = Sidecar::start(&Sidecar::static_target(&[&backend]), &["--max-concurrent-calls", "20"]);
    sidecar.wait_ready_endpoints(1);
    let (addr, pid) = (sidecar.addr, sidecar.proc.child.id());
    let rss0 = rss_kib(pid);

    // App A: 20 unary calls with 200 KiB replies on one connection with HTTP/2's default 64 KiB windows, none of
    // them read: the first reply fills the connection window, and every call stalls behind it.
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (mut a, conn) = h2::client::handshake(tcp).await.expect("handshake");
    let _a_task = tokio::spawn(conn);
    let big = "x".repeat(200 * 1024);
    let mut held = Vec::new();
    for _ in 0..20 {
        let mut req = slow_hello(addr, "0s");
        req.headers_mut().insert("grpc-timeout", http::HeaderValue::from_static("2S"));
        a = a.ready().await.expect("ready");
        let (res, mut body) = a.send_request(req, false).expect("send");
        body.send_data(Bytes::from(grpc_frame(&hello_request(&big))), true).expect("body");
        held.push((res, body));
    }
    wait_for("A's calls take every slot", Duration::from_secs(20), || (in_flight(&sidecar) == 20).then_some(()));

    // App B is refused while they hold the slots, and served once their deadline has passed, though A still
    // holds its connection and reads nothing.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let reply = one_call(addr, "b", "5S").await.expect("B's call");
        if reply.grpc_status == Some(0) {
            break;
        }
        assert_eq!(reply.grpc_status, Some(tonic::Code::ResourceExhausted as i32), "{}", reply.grpc_message);
        assert!(std::time::Instant::now() < deadline, "A's unread calls kept their slots past their deadline");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_for("no call in flight", Duration::from_secs(20), || (in_flight(&sidecar) == 0).then_some(()));
    let m = sidecar.metrics();
    let expired =
        "hello_sidecar_requests_total{method=\"/hello.v1.HelloService/SayHello\",grpc_status=\"DEADLINE_EXCEEDED\"}";
    assert!(metric(&m, expired) >= 19, "{m}");
    // What the sidecar holds for them is bounded by the windows: 20 × 200 KiB of replies at most.
    let rss = rss_kib(pid);
    assert!(rss <= rss0 + 32 * 1024, "RSS grew from {rss0} KiB to {rss} KiB");
    drop(held);
}
