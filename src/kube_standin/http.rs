//! The stand-in's HTTP side: routing, LIST and WATCH.

use std::{collections::HashMap, convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::{body::Frame, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::{
    Inner, Refusal,
    store::{Event, Selector, namespace_of},
};
use crate::BoxError;

type Body = UnsyncBoxBody<Bytes, BoxError>;

const PREFIX: &str = "/apis/discovery.k8s.io/v1/";

pub(super) async fn accept_loop(listener: TcpListener, inner: Arc<Inner>) {
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, _) = crate::listen::accept(&listener).await;
        let inner = inner.clone();
        let mut epoch = inner.epoch.subscribe();
        epoch.borrow_and_update();
        let svc = service_fn(move |req| {
            let inner = inner.clone();
            async move { Ok::<_, Infallible>(handle(inner, req).await) }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), svc).into_owned();
        tokio::spawn(async move {
            tokio::select! {
                _ = conn => {}
                _ = epoch.changed() => {} // going down: drop the connection on the floor
            }
        });
    }
}

async fn handle<B>(inner: Arc<Inner>, req: Request<B>) -> Response<Body> {
    // Every request counts, those refused or failed below included: a test of the client's retry pace reads them.
    let q = query(req.uri().query().unwrap_or(""));
    let is_watch = matches!(q.get("watch").map(String::as_str), Some("true" | "1"));
    let counter = if is_watch { &inner.watches } else { &inner.lists };
    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let failing =
        inner.fail_next.fetch_update(std::sync::atomic::Ordering::Relaxed, std::sync::atomic::Ordering::Relaxed, |n| {
            n.checked_sub(1)
        });
    if failing.is_ok() {
        return status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", "injected failure");
    }
    let refusal = *inner.refusal.lock();
    let forbidden = match refusal {
        Some(Refusal::Forbidden) => true,
        Some(Refusal::ForbiddenWatch) => is_watch,
        _ => false,
    };
    if forbidden {
        let ns = req.uri().path().split('/').skip_while(|p| *p != "namespaces").nth(1).unwrap_or("");
        let verb = if is_watch { "watch" } else { "list" };
        let message = format!(
            "endpointslices.discovery.k8s.io is forbidden: User \"system:serviceaccount:{ns}:hello-sidecar\" \
                 cannot {verb} resource \"endpointslices\" in API group \"discovery.k8s.io\" in the namespace \"{ns}\""
        );
        return status(StatusCode::FORBIDDEN, "Forbidden", &message);
    }
    if refusal == Some(Refusal::BadGateway) {
        let body = Full::new(Bytes::from_static(BAD_GATEWAY_PAGE.as_bytes())).map_err(|e: Infallible| match e {});
        let mut res = Response::new(body.boxed_unsync());
        *res.status_mut() = StatusCode::BAD_GATEWAY;
        res.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("text/html; charset=UTF-8"));
        return res;
    }
    if let Some(Refusal::Throttled { retry_after }) = refusal {
        let v = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "Too many requests, please try again later.", "reason": "TooManyRequests",
                "details": {"retryAfterSeconds": retry_after}, "code": 429});
        let mut res = json_response(StatusCode::TOO_MANY_REQUESTS, &v);
        res.headers_mut().insert(header::RETRY_AFTER, http::HeaderValue::from(retry_after));
        return res;
    }
    let mut stalled = inner.stalled.subscribe();
    let _ = stalled.wait_for(|s| !s).await;

    if req.method() != Method::GET {
        return status(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "the stand-in serves GET only");
    }
    let path = req.uri().path();
    let namespace = match path.strip_prefix(PREFIX) {
        Some("endpointslices") => None,
        Some(rest) => match rest.strip_prefix("namespaces/").and_then(|r| r.strip_suffix("/endpointslices")) {
            Some(ns) if !ns.is_empty() && !ns.contains('/') => Some(ns.to_owned()),
            _ => return status(StatusCode::NOT_FOUND, "NotFound", &format!("the server could not find {path}")),
        },
        None => return status(StatusCode::NOT_FOUND, "NotFound", &format!("the server could not find {path}")),
    };
    let Some(selector) = Selector::parse(q.get("labelSelector").map_or("", String::as_str)) else {
        return status(StatusCode::BAD_REQUEST, "BadRequest", "unable to parse labelSelector");
    };
    if is_watch { watch(inner, namespace, selector, &q) } else { list(&inner, namespace.as_deref(), &selector, &q) }
}

fn list(inner: &Inner, ns: Option<&str>, selector: &Selector, q: &HashMap<String, String>) -> Response<Body> {
    let store = inner.store.lock();
    let items = store.list(ns, selector);
    let rv = store.rv();
    drop(store);
    let offset = match q.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => match token.split_once(':').and_then(|(_, o)| o.parse::<usize>().ok()) {
            Some(o) => o,
            None => return status(StatusCode::BAD_REQUEST, "BadRequest", "invalid continue token"),
        },
        None => 0,
    };
    let limit = q.get("limit").and_then(|l| l.parse::<usize>().ok()).filter(|l| *l > 0).unwrap_or(usize::MAX);
    let page: Vec<Value> = items.iter().skip(offset).take(limit).cloned().collect();
    let next = offset.saturating_add(page.len());
    let mut metadata = json!({ "resourceVersion": rv.to_string() });
    if next < items.len() {
        metadata["continue"] = json!(format!("{rv}:{next}"));
        metadata["remainingItemCount"] = json!(items.len() - next);
    }
    let body = json!({ "kind": "EndpointSliceList", "apiVersion": "discovery.k8s.io/v1", "metadata": metadata, "items": page });
    json_response(StatusCode::OK, &body)
}

fn watch(inner: Arc<Inner>, ns: Option<String>, selector: Selector, q: &HashMap<String, String>) -> Response<Body> {
    let from = q.get("resourceVersion").and_then(|v| v.parse::<u64>().ok()).filter(|v| *v > 0);
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let timeout = Duration::from_secs(q.get("timeoutSeconds").and_then(|t| t.parse().ok()).unwrap_or(1800).min(3600));
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(64);
    let mut drop_watches = inner.drop_watches.subscribe();
    drop_watches.borrow_and_update();
    let mut epoch = inner.epoch.subscribe();
    epoch.borrow_and_update();
    let start = {
        let store = inner.store.lock();
        match from {
            // No resourceVersion: synthetic ADDED for everything there is, then changes.
            None => {
                let rv = store.rv();
                let initial: Vec<_> = store
                    .list(ns.as_deref(), &selector)
                    .into_iter()
                    .map(|object| Event { rv, kind: "ADDED", object, prev: None })
                    .collect();
                store.watch(rv).map(|(_, live)| (initial, live, rv))
            }
            Some(rv) => store.watch(rv).map(|(missed, live)| (missed, live, rv)),
        }
    };
    let (backlog, mut live, mut last_rv) = match start {
        Ok(s) => s,
        Err(gone) => {
            // The real API server answers an expired resourceVersion inside a 200 stream, not with HTTP 410.
            let rv = from.unwrap_or(0);
            let event = json!({"type": "ERROR", "object": {
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("too old resource version: {rv} ({})", gone.oldest), "reason": "Expired", "code": 410}});
            let _ = tx.try_send(Ok(Frame::data(line(&event))));
            drop(tx);
            return stream_response(rx);
        }
    };
    let matches = move |o: &Value| ns.as_deref().is_none_or(|n| n == namespace_of(o)) && selector.matches(o);
    let mut stalled = inner.stalled.subscribe();
    tokio::spawn(async move {
        for event in backlog {
            last_rv = last_rv.max(event.rv);
            if let Some(kind) = event.seen_through(&matches)
                && tx.send(Ok(Frame::data(line(&json!({"type": kind, "object": event.object}))))).await.is_err()
            {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut bookmark = tokio::time::interval(inner.bookmark_every);
        bookmark.tick().await;
        loop {
            tokio::select! {
                () = &mut deadline => return, // clean end: the client re-watches from its last resourceVersion
                _ = drop_watches.changed() => {
                    let _ = tx.send(Err("watch dropped by the stand-in".into())).await;
                    return;
                }
                _ = epoch.changed() => return, // going down
                event = live.recv() => {
                    let Ok(event) = event else { return }; // lagged or closed: end, the client re-watches
                    let _ = stalled.wait_for(|s| !s).await;
                    // A change made after the API went down or the watches were dropped must not reach this
                    // (already cut) watch, whatever order the tasks run in.
                    if epoch.has_changed().unwrap_or(true) || drop_watches.has_changed().unwrap_or(true) {
                        return;
                    }
                    last_rv = event.rv;
                    if let Some(kind) = event.seen_through(&matches) {
                        let ev = json!({"type": kind, "object": event.object});
                        if tx.send(Ok(Frame::data(line(&ev)))).await.is_err() { return }
                    }
                }
                _ = bookmark.tick(), if bookmarks => {
                    if *stalled.borrow() { continue }
                    // Only as far as the events this watch has been sent: the store may be ahead of them, with
                    // events still queued for this stream, and a client resuming from a bookmark skips up to it.
                    let rv = last_rv;
                    let ev = json!({"type": "BOOKMARK", "object": {"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
                        "metadata": {"resourceVersion": rv.to_string()}}});
                    if tx.send(Ok(Frame::data(line(&ev)))).await.is_err() { return }
                }
            }
        }
    });
    stream_response(rx)
}

/// A load balancer's error page, in the shape cloud load balancers serve (title, inline style, a paragraph).
const BAD_GATEWAY_PAGE: &str = "<!DOCTYPE html>\n<html lang=en>\n  <meta charset=utf-8>\n  \
<meta name=viewport content=\"initial-scale=1, minimum-scale=1, width=device-width\">\n  \
<title>Error 502 (Server Error)!!1</title>\n  <style>\n    *{margin:0;padding:0}html,code{font:15px/22px arial,\
sans-serif}html{background:#fff;color:#222;padding:15px}body{margin:7% auto 0;max-width:390px;min-height:180px;\
padding:30px 0 15px}* > body{background:url(/images/errors/robot.png) 100% 5px no-repeat;padding-right:205px}\
p{margin:11px 0 22px;overflow:hidden}ins{color:#777;text-decoration:none}a img{border:0}@media screen and \
(max-width:772px){body{background:none;margin-top:0;max-width:none;padding-right:0}}\n  </style>\n  \
<p><b>502.</b> <ins>That's an error.</ins>\n  <p>The server encountered a temporary error and could not complete \
your request.<p>Please try again in 30 seconds. <ins>That's all we know.</ins>\n";

fn line(v: &Value) -> Bytes {
    let mut s = v.to_string();
    s.push('\n');
    Bytes::from(s)
}

fn stream_response(rx: mpsc::Receiver<Result<Frame<Bytes>, BoxError>>) -> Response<Body> {
    let body = StreamBody::new(ReceiverStream::new(rx)).boxed_unsync();
    let mut res = Response::new(body);
    res.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    res
}

fn json_response(code: StatusCode, v: &Value) -> Response<Body> {
    let body = Full::new(Bytes::from(v.to_string())).map_err(|e: Infallible| match e {}).boxed_unsync();
    let mut res = Response::new(body);
    *res.status_mut() = code;
    res.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    res
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    let v = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16()});
    json_response(code, &v)
}

/// Query pairs, percent-decoded; empty pairs (kube sends `?&watch=true`) are skipped.
fn query(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_decode_like_kube_sends_them() {
        let q = query("&watch=true&labelSelector=kubernetes.io%2Fservice-name%3Dhello&resourceVersion=12");
        assert_eq!(q["labelSelector"], "kubernetes.io/service-name=hello");
        assert_eq!(q["watch"], "true");
        assert_eq!(decode("a%2"), "a%2");
        assert_eq!(decode("%zz"), "%zz");
    }
}
