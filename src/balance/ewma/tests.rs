use super::*;

const MS: Duration = Duration::from_millis(1);

fn ms(ns: f64) -> f64 {
    (ns / 1e3).round() / 1e3
}

#[tokio::test(start_paused = true)]
async fn a_slow_answer_is_the_peak_then_answers_are_averaged_by_time() {
    let e = PeakEwma::new(Duration::from_secs(1));
    e.observe(20 * MS);
    assert_eq!(e.estimate(), 20 * MS);
    // 100 ms later a 1 ms answer: weight 1 - e^-0.1; the 20 ms decayed by e^-0.1 first.
    tokio::time::advance(100 * MS).await;
    e.observe(MS);
    let expect = 20.0 * (-0.1f64).exp() + 1.0 * (1.0 - (-0.1f64).exp());
    assert_eq!(ms(e.estimate().as_nanos() as f64), (expect * 1e3).round() / 1e3);
}

#[tokio::test(start_paused = true)]
async fn frequent_reads_do_not_freeze_the_average() {
    // Equal answers every millisecond, read a hundred times in between: the estimate converges on them
    // instead of staying at the old peak (tower's read-resets-the-clock behaviour kept it at the peak).
    let e = PeakEwma::new(Duration::from_secs(1));
    e.observe(10 * MS);
    for _ in 0..3000 {
        for _ in 0..100 {
            let _ = e.load();
        }
        tokio::time::advance(MS).await;
        e.observe(MS);
    }
    // After 3 s: 1 + 9·e^-3 ms.
    assert_eq!(ms(e.estimate().as_nanos() as f64), ((1.0 + 9.0 * (-3.0f64).exp()) * 1e3).round() / 1e3);
}

#[tokio::test(start_paused = true)]
async fn cost_is_latency_times_calls_in_flight_plus_one() {
    let e = PeakEwma::new(Duration::from_secs(10));
    e.observe(2 * MS);
    assert_eq!(e.cost(), 2e6);
    e.start();
    e.answered(2 * MS);
    e.start();
    e.answered(2 * MS);
    assert_eq!(e.pending(), 2);
    assert_eq!(e.cost(), 6e6, "2 ms × (2 + 1)");
    e.finish();
    assert_eq!(e.cost(), 4e6);
}

#[tokio::test(start_paused = true)]
async fn silence_while_calls_wait_raises_the_cost_by_the_millisecond() {
    let e = PeakEwma::new(Duration::from_secs(10));
    e.observe(MS);
    e.start();
    tokio::time::advance(MS / 2).await;
    assert_eq!(e.load().0, 1e6 * (-0.5e-3f64 / 10.0).exp(), "silence shorter than the estimate changes nothing");
    tokio::time::advance(9 * MS + MS / 2).await;
    // 10 ms without an answer: latency 10 ms, one call in flight.
    assert_eq!(e.load(), (10e6, 1));
    assert_eq!(e.cost(), 20e6);
    // Another call answered: the endpoint is heard from, the silence starts over.
    e.start();
    e.answered(MS);
    assert_eq!(e.load().0, 1e6, "the silence never entered the estimate");
    assert_eq!(e.silent_for(Instant::now() - 5 * MS), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn an_unanswered_call_folds_in_its_elapsed_time_but_is_not_heard() {
    let e = PeakEwma::new(Duration::from_secs(10));
    e.observe(MS);
    let started = Instant::now();
    e.start();
    tokio::time::advance(2000 * MS).await;
    assert_eq!(e.silent_for(started), 2000 * MS);
    e.unanswered(2000 * MS);
    e.finish();
    assert_eq!(e.estimate(), 2000 * MS, "tower's PeakEwma on drop: the elapsed time is a peak");
    assert_eq!(e.load(), (2e9, 0));
    assert_eq!(e.answer_estimate(), Duration::ZERO, "no call was answered");
    e.start();
    e.answered(3 * MS);
    assert_eq!(e.answer_estimate(), 3 * MS);
}

#[tokio::test(start_paused = true)]
async fn one_late_answer_at_most_doubles_the_estimate_or_adds_5_ms() {
    let e = PeakEwma::new(Duration::from_secs(1));
    e.start();
    e.answered(MS);
    assert_eq!(e.estimate(), MS);
    // A 30 ms answer 1 ms later: the estimate as of the last answer (1 ms) + 5 ms.
    tokio::time::advance(MS).await;
    e.start();
    e.answered(30 * MS);
    assert_eq!(e.load().0, 6e6);
    // A pod that stays slow gets there in a few answers: doubling from the last estimate, whatever the decay
    // in between took off.
    for expect in [12e6, 24e6, 30e6] {
        tokio::time::advance(MS).await;
        e.start();
        e.answered(30 * MS);
        assert_eq!(e.load().0, expect);
    }
    assert_eq!(e.estimate(), 30 * MS);
    // An unanswered call's elapsed time is a peak at once.
    e.start();
    e.unanswered(2000 * MS);
    assert_eq!(e.estimate(), 2000 * MS);
}

#[tokio::test(start_paused = true)]
async fn the_first_answer_and_the_first_after_a_quiet_decay_period_are_taken_whole() {
    let e = PeakEwma::new(Duration::from_secs(1));
    e.start();
    e.answered(1000 * MS);
    assert_eq!(e.estimate(), 1000 * MS, "no estimate to doubt the first answer against");
    // Idle 5 s: the estimate decayed to 1 s · e^-5 ≈ 6.7 ms; the next 1 s answer is no lost time slice.
    tokio::time::advance(5000 * MS).await;
    e.start();
    e.answered(1000 * MS);
    assert_eq!(e.estimate(), 1000 * MS);
    // Answered 999 ms ago: recent, so a 3 s answer is capped at twice the last estimate.
    tokio::time::advance(999 * MS).await;
    e.start();
    e.answered(3000 * MS);
    assert_eq!(e.estimate(), 2000 * MS);
}

#[tokio::test(start_paused = true)]
async fn the_answer_estimate_is_a_mean_of_answers_that_idleness_does_not_decay() {
    let e = PeakEwma::new(Duration::from_secs(1));
    assert_eq!(e.answer_estimate(), Duration::ZERO);
    e.start();
    e.answered(400 * MS);
    tokio::time::advance(3000 * MS).await;
    assert_eq!(e.answer_estimate(), 400 * MS, "a quiet pod is as slow as it was");
    // 1 s later a 100 ms answer: weight 1 - e^-1.
    tokio::time::advance(1000 * MS).await;
    e.start();
    e.answered(100 * MS);
    let keep = (-4.0f64).exp();
    assert_eq!(e.answer_estimate(), Duration::from_nanos((400e6 * keep + 100e6 * (1.0 - keep)) as u64));
}

#[tokio::test(start_paused = true)]
async fn how_far_answers_stray_is_averaged_by_time_too() {
    let e = PeakEwma::new(Duration::from_secs(1));
    e.start();
    e.answered(MS);
    assert_eq!(e.sample(Instant::now(), 0.0).2, 0.0, "the first answer has nothing to stray from");
    let d = (-0.01f64).exp();
    tokio::time::advance(10 * MS).await;
    e.start();
    e.answered(MS);
    assert_eq!(e.sample(Instant::now(), 0.0).2, 0.0, "the same answer again");
    // One answer 20 ms late moves it by its time weight only: a lost time slice is not noise by itself.
    tokio::time::advance(10 * MS).await;
    e.start();
    e.answered(21 * MS);
    assert_eq!(e.sample(Instant::now(), 0.0).2, 20e6 * (1.0 - d));
    assert!(e.sample(Instant::now(), 0.0).2 < 0.25e6);
}

#[tokio::test(start_paused = true)]
async fn how_far_answers_stray_decays_like_the_estimate() {
    let e = PeakEwma::new(Duration::from_secs(1));
    e.start();
    e.answered(MS);
    tokio::time::advance(MS).await;
    e.start();
    e.answered(11 * MS);
    let dev = 10e6 * (1.0 - (-1e-3f64).exp());
    assert_eq!(e.sample(Instant::now(), 0.0).2, dev);
    tokio::time::advance(2000 * MS).await;
    assert_eq!(e.sample(Instant::now(), 0.0).2, dev * (-2.0f64).exp());
}

#[tokio::test(start_paused = true)]
async fn a_pod_that_is_steadily_slow_does_not_stray() {
    // A 1 s pod tried every 5 s: its estimate decays to 6.7 ms in between and jumps back to 1 s, but its
    // answers do not stray from their mean, so its spread cannot make it look alike a fast pod.
    let e = PeakEwma::new(Duration::from_secs(1));
    for _ in 0..5 {
        e.start();
        tokio::time::advance(1000 * MS).await;
        e.answered(1000 * MS);
        e.finish();
        assert_eq!(e.sample(Instant::now(), 0.0).2, 0.0);
        tokio::time::advance(5000 * MS).await;
    }
}

#[tokio::test(start_paused = true)]
async fn without_answers_the_estimate_decays_towards_zero() {
    let e = PeakEwma::new(Duration::from_secs(1));
    e.observe(20 * MS);
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(e.estimate(), Duration::from_nanos((20e6 * (-2.0f64).exp()) as u64));
    // A re-admitted endpoint starts pessimistic, not from the decayed past.
    e.reset_pessimistic(30 * MS);
    assert_eq!(e.estimate(), 30 * MS);
}
