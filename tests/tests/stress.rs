//! Short boot-and-stress runs of the main job (`gpuswap-run`) in the test
//! suite: one that must pass with every check while the daemon refuses an
//! ATTACH now and then; one whose daemon corrupts a transfer on purpose,
//! which the checks must catch and name; one against a host that completes
//! DETACHes 3 s late, which must not freeze the guest; and one whose
//! transfers complete 6 s late, which must fail the responsiveness check.

use std::collections::HashMap;
use std::time::Duration;

use gpuswap_harness::stress::{self, Options, Scenario};
use gpuswap_harness::trace_file;
use serde_json::Value;

/// Debian's QEMU 10, which hides blob resources from the guest.
const STOCK_QEMU: &str = "/usr/bin/qemu-system-x86_64";

fn short(scenario: Scenario, name: &str, seconds: u64) -> Options {
    let mut o = Options::new(scenario);
    o.duration = Duration::from_secs(seconds);
    o.cycles = 2;
    // The same squeeze of the same usable memory on a KASAN kernel.
    o.memory_mib = gpuswap_tests::squeezed_guest_mib(384);
    o.squeeze_mib = 384 * 6 / 10;
    o.bos = 32;
    o.seed = 11;
    o.progress = Some(true);
    let dir = gpuswap_harness::root().join("target/stress-tests");
    o.report = dir.join(format!("{name}.json"));
    o
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    &report["checks"][name]
}

/// With the daemon refusing an ATTACH every 5 s: each refused use fails
/// with EIO in the guest and the next one attaches, so every check passes.
#[test]
fn short_sawtooth_run_with_refused_attaches_passes_every_check() {
    let _guest = gpuswap_tests::one_guest_at_a_time();
    let mut o = short(Scenario::Sawtooth, "sawtooth", 75);
    o.fail_attach_every = Some(Duration::from_secs(5));
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
    let refused = &r["daemon_counters"]["counters"]["errors"]["resource_attach_backing"];
    assert!(refused.as_u64().unwrap_or(0) > 0, "nothing refused: {r}");
    assert_eq!(refused, &r["guest_shrinker"]["attach_failures"]);
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
    // The guest kernel's side of the story: at least the ATTACH of the
    // backing the corrupted transfer went through, by resource id.
    let kernel = failure["guest_kernel"]
        .as_array()
        .unwrap_or_else(|| panic!("no guest kernel events in the story: {failure}"));
    assert!(
        kernel
            .iter()
            .any(|e| e["event"] == "bo_attach" && e["args"]["res"].as_u64() == Some(res_id)),
        "no guest ATTACH of resource {res_id} in the story: {kernel:?}"
    );
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

/// Every DETACH_BACKING completes 1.5 s late. Before the kernel series
/// made reclaim non-blocking (patch 0012), one shrinker scan evicted
/// buffer after buffer, waiting for each DETACH, while every other
/// reclaimer waited for the scan: the guest froze for minutes
/// (docs/stress, 137 s with 3 s DETACHes). Now reclaim never waits behind
/// a scan, a scan waits at most 20 ms, and one DETACH batch at a time is
/// in flight, so each command a request queues waits behind one batch at
/// most. A workload transfer queues two in turn when its buffer must be
/// attached: the ATTACH, whose answer it waits for (patch 0016), then the
/// transfer and its fence barrier, and a new batch can go out in between.
/// So the host holds such a request back for two delays at most: 3 s, as
/// one 3 s delay did before 0016 (CI saw 5.8 s with 3 s delays after it).
/// The bound is the default, 5 s: the guest stays responsive and every
/// check passes, evictions included. (That the check fails when the guest
/// does not answer in time: the next test, on a real guest, and the
/// sampler's own tests, `stress::sampler::tests`, for both kinds of stall.)
#[test]
fn a_slow_host_does_not_freeze_the_guest() {
    let _guest = gpuswap_tests::one_guest_at_a_time();
    let mut o = short(Scenario::Steady, "slow-host", 40);
    o.cycles = 1;
    o.daemon_faults = vec![
        "--fault-delay".into(),
        "resource_detach_backing=1500".into(),
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
    // The delay bit: buffers were evicted, each DETACH 1.5 s late.
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

/// One event of a trace file: time (µs since the run began) and, for a
/// guest kernel event, the uncertainty of its placement.
#[derive(Debug, Clone, Copy)]
struct Mark {
    ts: f64,
    uncertainty: f64,
    /// A guest ATTACH queued for a transfer.
    for_transfer: bool,
}

/// A resource's life in the trace: resource ids come back after an
/// UNREF, so `(resource, generation)` names one backing only together
/// with how many UNREFs of that id the daemon had done before.
type Key<'a> = (u64, &'a str, u64, usize, u64);

/// `--trace` writes one timeline that a viewer can open, and it tells the
/// truth about order: for every backing the guest evicted and attached
/// again, the guest queued the DETACH before the daemon detached it, the
/// guest let the pages go only after, the guest queued the next ATTACH
/// before the daemon attached it, and a transfer's ATTACH reached the
/// daemon before the transfer request returned, all within the stated
/// clock uncertainty. (Forced scans on top of the sawtooth make sure there
/// are such backings.)
#[test]
fn the_trace_file_orders_guest_kernel_and_daemon_events() {
    let _guest = gpuswap_tests::one_guest_at_a_time();
    let mut o = short(Scenario::Sawtooth, "trace", 40);
    o.pressure.forced_scan = true;
    let path = o.report.with_extension("trace.json");
    let _ = std::fs::remove_file(&path);
    o.trace = Some(path.clone());
    let outcome = stress::run(&o).expect("the run starts");
    assert!(
        outcome.passed,
        "stress run failed: see {}",
        outcome.report_path.display()
    );
    // The guest keeps time with its TSC (qemu-scripts/gpuswap-vm): with
    // refined-jiffies its clock steps, and no alignment holds. `tsc-early`
    // is the same counter at the same rate (`tsc_early_khz` is given, and
    // without HPET or PM timer the kernel keeps it when it registers `tsc`
    // a second after its device initcalls, which a fast boot's agent can
    // beat).
    let clocksource = &outcome.report["guest"]["clocksource"];
    assert!(
        clocksource == "tsc" || clocksource == "tsc-early",
        "{}",
        outcome.report["guest"]
    );
    let text = std::fs::read_to_string(&path).expect("the trace file");
    let trace: Value = serde_json::from_str(&text).expect("the trace file is JSON");
    let summary = trace_file::validate(&trace).expect("valid trace-event JSON");
    assert_eq!(summary.named_processes.len(), 4, "{summary:?}");
    assert!(
        summary.completes > 100 && summary.counters > 30,
        "{summary:?}"
    );
    let events = trace["traceEvents"].as_array().unwrap();
    let (guest, daemon) = (trace_file::PID_GUEST_KERNEL, trace_file::PID_DAEMON);

    // The daemon's UNREFs per resource id: the boundaries of its lives.
    let mut unrefs: HashMap<u64, Vec<f64>> = HashMap::new();
    for e in events {
        if e["pid"].as_u64() == Some(daemon) && e["name"] == "unref" {
            let (res, ts) = (e["tid"].as_u64().unwrap(), e["ts"].as_f64().unwrap());
            unrefs.entry(res).or_default().push(ts);
        }
    }
    // Which life of `res` an event at `ts` belongs to; None when an UNREF
    // lies within its uncertainty (it cannot be told).
    let life = |res: u64, ts: f64, uncertainty: f64| -> Option<usize> {
        let bounds = unrefs.get(&res).map_or(&[][..], Vec::as_slice);
        if bounds
            .iter()
            .any(|&u| (u - ts).abs() <= uncertainty && uncertainty > 0.0)
        {
            return None;
        }
        Some(bounds.iter().filter(|&&u| u < ts).count())
    };
    let mut marks: HashMap<Key<'_>, Vec<Mark>> = HashMap::new();
    let mut transfers: Vec<(f64, f64)> = Vec::new();
    let mut unplaced = 0;
    for e in events {
        let (pid, name, ts) = (e["pid"].as_u64(), e["name"].as_str(), e["ts"].as_f64());
        let (Some(pid), Some(name), Some(ts)) = (pid, name, ts) else {
            continue;
        };
        if pid == trace_file::PID_HARNESS && name == "transfer_to_host" {
            transfers.push((ts, ts + e["dur"].as_f64().unwrap()));
            continue;
        }
        let args = &e["args"];
        let (res, gen, uncertainty) = match pid {
            p if p == guest => (
                args["res"].as_u64(),
                args["gen"].as_u64(),
                args["uncertainty_us"].as_f64().unwrap_or(f64::NAN),
            ),
            p if p == daemon => (e["tid"].as_u64(), args["generation"].as_u64(), 0.0),
            _ => continue,
        };
        let (Some(res), Some(gen)) = (res, gen) else {
            continue;
        };
        match life(res, ts, uncertainty) {
            Some(l) => marks
                .entry((pid, name, res, l, gen))
                .or_default()
                .push(Mark {
                    ts,
                    uncertainty,
                    for_transfer: args["use"] == "transfer",
                }),
            None => unplaced += 1,
        }
    }
    // The first of its kind (evictions and restores repeat within one
    // backing: a fault restores without an ATTACH); DETACHes and ATTACHes
    // happen once per backing.
    let first = |key: Key<'_>| marks.get(&key).map(|m| m[0]);
    let once = |key: Key<'_>| {
        let m = marks.get(&key)?;
        assert_eq!(m.len(), 1, "{key:?} more than once: {m:?}");
        Some(m[0])
    };
    let (mut cycles, mut transfers_judged) = (0, 0);
    let mut wrong = Vec::new();
    let mut check = |what: &str, a: Mark, b: Mark, key: Key<'_>| {
        let slack = a.uncertainty.max(b.uncertainty);
        assert!(slack.is_finite(), "{what}: uncertainty {slack} µs");
        if a.ts > b.ts + slack {
            wrong.push(format!(
                "{key:?}: {what} ({:.0} µs, uncertainty {slack:.0} µs)",
                a.ts - b.ts
            ));
        }
    };
    let detaches: Vec<Key<'_>> = marks
        .keys()
        .filter(|k| k.0 == guest && k.1 == "bo_detach")
        .copied()
        .collect();
    for (_, _, res, l, gen) in detaches {
        let queued = once((guest, "bo_detach", res, l, gen)).unwrap();
        let Some(detached) = once((daemon, "detach", res, l, gen)) else {
            continue;
        };
        let key = (guest, "bo_detach", res, l, gen);
        check(
            "the daemon detached before the guest queued it",
            queued,
            detached,
            key,
        );
        if let Some(evicted) = first((guest, "bo_evict", res, l, gen)) {
            check(
                "the guest let the pages go before the daemon detached",
                detached,
                evicted,
                key,
            );
        }
        let (Some(reattach), Some(attached)) = (
            once((guest, "bo_attach", res, l, gen + 1)),
            once((daemon, "attach", res, l, gen + 1)),
        ) else {
            continue;
        };
        cycles += 1;
        let key = (guest, "bo_attach", res, l, gen + 1);
        check(
            "the daemon attached before the guest queued it",
            reattach,
            attached,
            key,
        );
        // A transfer's ATTACH goes out before the transfer, which the
        // request waits for: the daemon attached before the request
        // returned. (Only for a request that surely holds the ATTACH.)
        let (lo, hi) = (
            reattach.ts - reattach.uncertainty,
            reattach.ts + reattach.uncertainty,
        );
        if let Some(&(_, end)) = transfers
            .iter()
            .filter(|_| reattach.for_transfer)
            .find(|(start, end)| *start <= lo && hi <= *end)
        {
            transfers_judged += 1;
            let returned = Mark {
                ts: end,
                uncertainty: 0.0,
                for_transfer: false,
            };
            check(
                "the transfer returned before the daemon attached",
                attached,
                returned,
                key,
            );
        }
    }
    assert!(
        cycles > 0,
        "no backing was detached and attached again on both sides: {}",
        outcome.report["events"]
    );
    assert!(
        wrong.is_empty(),
        "{} of {cycles} cycles out of order: {wrong:#?}",
        wrong.len()
    );
    eprintln!(
        "{cycles} detach/attach cycles in order ({transfers_judged} against their transfer); \
         {unplaced} events next to an UNREF not judged"
    );
    // The alignment is worth something: a few ms (the guest sampler's
    // round trip under TCG), not the run's length.
    let kernel = &outcome.report["events"]["guest_kernel"];
    let median = kernel["uncertainty_us"]["median"].as_f64().unwrap();
    assert!(
        median < 20_000.0,
        "median uncertainty {median} µs: {kernel}"
    );
    // Nothing was lost on the way.
    let lost = &kernel["lost"];
    for (what, n) in lost.as_object().unwrap() {
        assert_eq!(n, 0, "{what}: {lost}");
    }
    assert_eq!(outcome.report["events"]["daemon_events"]["lost"], 0);
}
