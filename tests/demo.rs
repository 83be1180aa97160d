//! The README's first command tells the whole story and ends by itself.

mod common;

use std::process::Command;

#[test]
fn the_demo_scales_restarts_survives_the_api_outage_and_ends_with_a_summary() {
    let out = Command::new(common::BIN).args(["demo", "--duration", "8s"]).output().expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exit {:?}\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    for expected in
        ["scale up 3 → 5", "scale down to 2", "rolling restart", "API server DOWN", "API server back", "== summary =="]
    {
        assert!(stdout.contains(expected), "missing {expected:?} in:\n{stdout}");
    }
    // Pods created by the scale-up answered calls.
    assert!(stdout.contains("hello-3") && stdout.contains("hello-4"), "{stdout}");
    assert!(stdout.contains("status: OK="), "{stdout}");
}
