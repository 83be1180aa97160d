//! The README's first command tells the whole story and ends by itself.

mod common;

use std::{process::Command, sync::Mutex};

/// The demo's pods listen on fixed addresses (127.0.10.x:18080): its tests take turns.
static PODS: Mutex<()> = Mutex::new(());

#[test]
fn the_demo_scales_restarts_survives_the_api_outage_and_ends_with_a_summary() {
    let _turn = PODS.lock().unwrap_or_else(|e| e.into_inner());
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

#[test]
fn a_pod_address_in_use_is_named_with_its_cause() {
    // It said only "pod hello-0 did not start on 127.0.10.10:18080": nothing about why (another demo running).
    let _turn = PODS.lock().unwrap_or_else(|e| e.into_inner());
    let held = std::net::TcpListener::bind("127.0.10.10:18080").expect("hold the first pod's address");
    let out = Command::new(common::BIN).args(["demo", "--duration", "2s"]).output().expect("run the demo");
    drop(held);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("127.0.10.10:18080") && stderr.contains("in use"), "{stderr}");
}
