//! Short boot-and-stress runs of the main job (`gpuswap-run`) in the test
//! suite: one that must pass with every check; one whose daemon corrupts a
//! transfer on purpose, which the checks must catch and name; one against
//! a host that completes DETACHes 3 s late, which must not freeze the
//! guest; and one whose transfers complete 6 s late, which must fail the
//! responsiveness check.

use std::time::Duration;

use gpuswap_tests::stress::{self, Options, Scenario};
use serde_json::Value;

/// Debian's QEMU 10, which hides blob resources from the guest.
const STOCK_QEMU: &str = "/usr/bin/qemu-system-x86_64";

fn short(scenario: Scenario, name: &str, seconds: u64) -> Options {
    let mut o = Options::new(scenario);
    o.duration = Duration::from_secs(seconds);
    o.cycles = 2;
    o.memory_mib = 384;
    o.squeeze_mib = 384 * 6 / 10;
    o.bos = 32;
    o.seed = 11;
    o.progress = Some(true);
    let dir = gpuswap_tests::root().join("target/stress-tests");
    o.report = dir.join(format!("{name}.json"));
    o
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    &report["checks"][name]
}

#[test]
fn short_sawtooth_run_passes_every_check() {
    let _guest = gpuswap_tests::one_guest_at_a_time();
    let o = short(Scenario::Sawtooth, "sawtooth", 75);
    let outcome = stress::run(&o).expect("the run starts");
    let r = &outcome.report;
    assert_eq!(r["qemu"]["blob_negotiated"], true, "{}", r["qemu"]);
    assert!(
        outcome.passed,
        "stress run failed: see {}",
        outcome.report_path.display()
    );
    // Pressure bit and the host saw it: evictions are DETACHes there.
    assert!(
        r["guest_shrinker"]["evictions"].as_u64().unwrap() > 0,
        "{r}"
    );
    assert!(r["guest_shrinker"]["restores"].as_u64().unwrap() > 0, "{r}");
    assert!(
        r["daemon_counters"]["counters"]["detaches"]
            .as_u64()
            .unwrap()
            > 0
    );
    for name in [
        "host_copy_matches_guest",
        "guest_content_intact",
        "final_content_intact",
    ] {
        assert!(
            check(r, name)["passed"].as_u64().unwrap() > 0,
            "{name}: {r}"
        );
    }
    let svg = std::fs::read_to_string(&outcome.picture_path).expect("picture");
    assert!(svg.starts_with("<svg"), "not an SVG");
    assert!(r["timeline"]["samples"].as_array().unwrap().len() > 30);
}

/// The daemon flips one byte of a host copy after one transfer: the run
/// must fail on exactly that check, name that resource (the one the
/// daemon's trace shows the fault on) and print how to reproduce it.
/// On stock QEMU, so the harness's 2D-only path runs in the suite too.
#[test]
fn a_corrupted_transfer_is_detected_and_named() {
    let _guest = gpuswap_tests::one_guest_at_a_time();
    let mut o = short(Scenario::Steady, "corrupt", 20);
    o.cycles = 1;
    o.qemu = Some(STOCK_QEMU.into());
    o.daemon_faults = vec!["--fault-corrupt-transfers".into(), "1".into()];
    let outcome = stress::run(&o).expect("the run starts");
    let r = &outcome.report;
    assert!(!outcome.passed, "a corrupted transfer went unnoticed: {r}");
    assert_eq!(r["qemu"]["blob_negotiated"], false, "{}", r["qemu"]);
    let host = check(r, "host_copy_matches_guest");
    assert_eq!(host["failed"], 1, "{host}");
    let failure = &host["failures"][0];
    let res_id = failure["res_id"]
        .as_u64()
        .expect("the failure names a resource");
    let fault = failure["daemon_trace"]
        .as_array()
        .expect("the daemon's trace of that resource")
        .iter()
        .find(|e| e["event"] == "fault")
        .unwrap_or_else(|| panic!("no fault event in the trace of resource {res_id}: {failure}"));
    assert_eq!(fault["fault"], "corrupt_transfer");
    assert_eq!(fault["resource_id"].as_u64(), Some(res_id));
    assert!(failure["guest_history"]
        .as_array()
        .is_some_and(|h| !h.is_empty()));
    // Everything else held: the corruption is the only thing wrong.
    for (name, c) in r["checks"].as_object().unwrap() {
        if name != "host_copy_matches_guest" && name != "pressure_bit" {
            assert_eq!(c["failed"], 0, "{name}: {c}");
        }
    }
    assert_eq!(r["daemon_counters"]["counters"]["faults_injected"], 1);
    let reproduce = r["reproduce"].as_str().unwrap();
    assert!(reproduce.contains("--seed 11") && reproduce.contains("--fault-corrupt-transfers 1"));
}

/// Every DETACH_BACKING completes 3 s late. Before the kernel series made
/// reclaim non-blocking (patch 0008), one shrinker scan evicted buffer
/// after buffer, waiting for each DETACH, while every other reclaimer
/// waited for the scan: the guest froze for minutes (docs/stress, 137 s).
/// Now reclaim never waits behind a scan, a scan waits at most 20 ms, and
/// one DETACH batch at a time is in flight: the guest stays responsive and
/// every check passes, evictions included. (That the check fails when the
/// guest does not answer in time: the next test, on a real guest, and the
/// sampler's own tests, `stress::sampler::tests`, for both kinds of stall.)
#[test]
fn a_slow_host_does_not_freeze_the_guest() {
    let _guest = gpuswap_tests::one_guest_at_a_time();
    let mut o = short(Scenario::Steady, "slow-host", 40);
    o.cycles = 1;
    o.daemon_faults = vec![
        "--fault-delay".into(),
        "resource_detach_backing=3000".into(),
    ];
    let outcome = stress::run(&o).expect("the run starts");
    let r = &outcome.report;
    let responsive = check(r, "guest_stayed_responsive");
    assert_eq!(
        responsive["failed"], 0,
        "the guest froze: {}",
        responsive["failures"]
    );
    assert!(
        outcome.passed,
        "stress run failed: see {}",
        outcome.report_path.display()
    );
    // The delay bit: buffers were evicted, each DETACH 3 s late.
    assert!(
        r["daemon_counters"]["counters"]["detaches"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(
        r["guest_shrinker"]["evictions"].as_u64().unwrap() > 0,
        "{r}"
    );
    let slowest = r["sampling"]["slowest_agent_request_s"].as_f64().unwrap();
    assert!(slowest < o.max_stall.as_secs_f64(), "{}", r["sampling"]);
    // The run took its time, not the host's: no long freeze at the end.
    assert!(
        r["elapsed_s"].as_f64().unwrap() < 40.0 + 60.0,
        "{}",
        r["elapsed_s"]
    );
}

/// The check fails on a real guest too: the daemon completes every 2D
/// transfer 6 s late, so each workload transfer waits longer than the 5 s
/// bound. The run must fail on `guest_stayed_responsive`, naming the
/// request in flight.
#[test]
fn a_workload_request_longer_than_the_bound_fails_the_check() {
    let _guest = gpuswap_tests::one_guest_at_a_time();
    let mut o = short(Scenario::Steady, "slow-transfers", 15);
    o.cycles = 1;
    o.bos = 2;
    o.sizes = vec![(64, 64)];
    o.daemon_faults = vec!["--fault-delay".into(), "transfer_to_host_2d=6000".into()];
    let outcome = stress::run(&o).expect("the run starts");
    let r = &outcome.report;
    assert!(
        !outcome.passed,
        "a 6 s request passed a 5 s bound: {}",
        r["sampling"]
    );
    let responsive = check(r, "guest_stayed_responsive");
    let stall = &responsive["failures"][0];
    assert_eq!(
        stall["unanswered"], "agent request transfer_to_host",
        "{responsive}"
    );
    assert!(stall["stall_s"].as_f64().unwrap() > 5.0, "{stall}");
    // The sampler itself kept getting answers.
    assert!(responsive["passed"].as_u64().unwrap() > 0, "{responsive}");
}
