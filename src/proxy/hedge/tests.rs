use std::convert::Infallible;

use bytes::Bytes;
use http::HeaderValue;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use tokio::time::{Instant, advance};

use super::*;

const MS: Duration = Duration::from_millis(1);

fn policy(max_attempts: u32, delay: Duration) -> HedgingPolicy {
    let non_fatal = crate::service_config::ServiceConfig::parse(
        r#"{"methodConfig": [{"name": [{}], "hedgingPolicy": {"maxAttempts": 2, "nonFatalStatusCodes": ["UNAVAILABLE"]}}]}"#,
    )
    .expect("valid")
    .lookup("/a.B/C")
    .and_then(|p| p.hedging.clone())
    .expect("hedging")
    .non_fatal;
    HedgingPolicy { max_attempts, delay, non_fatal }
}

#[tokio::test(start_paused = true)]
async fn a_hedge_goes_each_delay_without_an_answer_up_to_max_attempts() {
    let mut s = Schedule::new(&policy(3, 100 * MS));
    assert!(s.due(), "the first attempt goes at once");
    s.on_sent();
    assert_eq!(s.sent(), 1);
    advance(99 * MS).await;
    assert!(!s.due(), "no hedge before the delay");
    advance(MS).await;
    assert!(s.due(), "one hedging delay later");
    s.on_sent();
    advance(100 * MS).await;
    assert!(s.due());
    s.on_sent();
    assert_eq!((s.sent(), s.next()), (3, None), "maxAttempts reached: nothing more is due");
    advance(Duration::from_secs(10)).await;
    assert!(!s.due());
}

#[tokio::test(start_paused = true)]
async fn a_zero_delay_sends_every_attempt_at_once() {
    let mut s = Schedule::new(&policy(4, Duration::ZERO));
    let mut sent = 0;
    while s.due() {
        s.on_sent();
        sent += 1;
    }
    assert_eq!(sent, 4);
}

#[tokio::test(start_paused = true)]
async fn a_non_fatal_status_sends_the_next_hedge_at_once_and_the_delay_resumes_after_it() {
    let mut s = Schedule::new(&policy(3, Duration::from_secs(1)));
    s.on_sent();
    advance(10 * MS).await;
    assert!(!s.due());
    s.on_non_fatal(None);
    assert!(s.due(), "A6: a non-fatal status shortcuts the hedging delay");
    s.on_sent();
    let at = Instant::now();
    assert_eq!(s.next(), Some(at + Duration::from_secs(1)), "subsequent hedges resume at hedgingDelay");
}

#[tokio::test(start_paused = true)]
async fn pushback_delays_the_next_hedge_or_stops_hedging() {
    let mut s = Schedule::new(&policy(3, Duration::from_secs(1)));
    s.on_sent();
    s.on_non_fatal(Some(&HeaderValue::from_static("300")));
    advance(299 * MS).await;
    assert!(!s.due(), "A6: the next hedge waits for the pushback");
    advance(MS).await;
    assert!(s.due());
    s.on_sent();
    assert_eq!(s.next(), Some(Instant::now() + Duration::from_secs(1)), "then n + hedgingDelay");

    for refusal in ["-1", "soon", ""] {
        let mut s = Schedule::new(&policy(3, Duration::from_secs(1)));
        s.on_sent();
        s.on_non_fatal(Some(&HeaderValue::from_static(refusal)));
        assert_eq!(s.next(), None, "A6: pushback {refusal:?} means no more hedges");
    }
}

#[tokio::test(start_paused = true)]
async fn postponed_and_resent_attempts_do_not_count_against_max_attempts() {
    let mut s = Schedule::new(&policy(2, 50 * MS));
    s.on_sent();
    advance(50 * MS).await;
    s.postpone();
    assert!(!s.due(), "no endpoint now: tried a hedging delay later");
    assert_eq!(s.sent(), 1);
    advance(50 * MS).await;
    s.on_sent();
    assert_eq!(s.next(), None);
    s.resend();
    assert!(s.due(), "a request the endpoint never processed goes again at once");
    s.on_sent();
    assert_eq!((s.sent(), s.next()), (2, None));
    s.stop();
    s.on_non_fatal(None);
    assert_eq!(s.next(), None, "a stopped schedule stays stopped");
}

#[test]
fn headers_commit_non_fatal_codes_go_on_and_the_rest_end_the_call() {
    let non_fatal = policy(2, MS).non_fatal;
    assert_eq!(verdict(None, non_fatal), Verdict::Commit);
    assert_eq!(verdict(Some(Code::Unavailable), non_fatal), Verdict::NonFatal);
    assert_eq!(verdict(Some(Code::Ok), non_fatal), Verdict::Fatal);
    assert_eq!(verdict(Some(Code::InvalidArgument), non_fatal), Verdict::Fatal);
}

/// Hedged attempts read one request body at once: every view gets every frame, whichever view the client's body
/// wakes, and one view dropped mid-way does not strand the others.
#[tokio::test(start_paused = true)]
async fn hedged_views_of_one_body_all_read_it_to_the_end() {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let origin = ReplayBody::new(body, 64 * 1024, 1 << 20);
    origin.share();
    let collect = |view: ReplayBody<_>| {
        tokio::spawn(async move { view.collect().await.map(|c| c.to_bytes()).map_err(|e| e.to_string()) })
    };
    let a = collect(origin.replay().expect("view"));
    let b = collect(origin.replay().expect("view"));
    let dropped = origin.replay().expect("view");
    let c = tokio::spawn(async move {
        let mut v = dropped;
        let _ = v.frame().await;
    });
    // One gRPC message of 13 bytes, in three DATA frames.
    for chunk in [&b"\0\0\0\0\x0done "[..], b"two ", b"three"] {
        tokio::time::sleep(10 * MS).await;
        let sent = tokio::time::timeout(Duration::from_secs(5), tx.send(Ok(Frame::data(Bytes::from_static(chunk)))));
        sent.await.expect("a view reads on").expect("send");
        if chunk.starts_with(b"\0") {
            tokio::time::sleep(MS).await;
            c.abort();
        }
    }
    drop(tx);
    for view in [a, b] {
        let got = tokio::time::timeout(Duration::from_secs(5), view).await.expect("not stranded").expect("task");
        assert_eq!(got.as_deref(), Ok(&b"\0\0\0\0\x0done two three"[..]));
    }
}

/// With `hedgingDelay` 0, a due hedge that finds no usable endpoint while another attempt is in flight was
/// postponed to "now", so `hedged` picked again at once, forever: a busy loop (snapshot, describe, format) until
/// the attempt in flight ended. Reached when the only endpoint stops being usable mid-call (ejected by other calls'
/// failures, or reconnecting after a GOAWAY refused a hedge that is then re-sent). It now waits for the endpoint
/// set to change.
#[tokio::test(start_paused = true)]
async fn a_postponed_hedge_with_a_zero_delay_is_not_due_again_at_once() {
    let mut s = Schedule::new(&policy(2, Duration::ZERO));
    s.on_sent();
    assert!(s.due(), "the hedge is due at once");
    s.postpone();
    assert!(!s.due(), "no endpoint could take it: it must not be due again before something changes");
    assert_eq!(s.timer(), None, "no timer wakes it: only a change of the endpoint set");
    assert!(s.parked());
    advance(Duration::from_secs(1)).await;
    assert!(!s.due(), "time alone does not make it due");
    s.endpoints_changed();
    assert!(s.due(), "the endpoint set changed: the hedge is tried again");
    assert!(!s.parked());
}

/// With a non-zero `hedgingDelay`, a postponed hedge goes again at the earlier of a delay and a change of the set.
#[tokio::test(start_paused = true)]
async fn a_postponed_hedge_goes_at_the_delay_or_at_a_change_whichever_is_first() {
    let mut s = Schedule::new(&policy(3, 100 * MS));
    s.on_sent();
    advance(100 * MS).await;
    s.postpone();
    assert!(!s.due());
    assert!(s.timer().is_some());
    advance(100 * MS).await;
    assert!(s.due(), "a hedging delay later");
    s.postpone();
    advance(10 * MS).await;
    s.endpoints_changed();
    assert!(s.due(), "the set changed before the delay");
}
