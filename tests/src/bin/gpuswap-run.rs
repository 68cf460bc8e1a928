//! gpuswap's main job: boot the guest on the gpuswap daemon, keep a set of
//! buffers of mixed sizes going through write -> transfer -> verify rounds,
//! and between rounds have the guest's shrinker evict the idle ones, so the
//! next round restores them (mmap fault, then ATTACH_BACKING of new pages).
//! It proves from both sides that every byte survived: the guest re-reads
//! its buffers, the daemon's control socket hashes its host copies and the
//! attached backings, its trace must hold no protocol violation, evictions
//! and restores must both have happened, and the guest kernel log must be
//! clean. Writes a JSON report and a summary.
//!
//! Usage: gpuswap-run [--bos N] [--rounds N] [--seed N] [--memory MiB]
//!                    [--no-evict] [--report PATH]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use gpuswap_tests::{kernel_problems, tail, Control, Daemon, Images, RunDir, Vm, VmConfig};
use serde_json::{json, Value};

struct Options {
    bos: u32,
    rounds: u32,
    seed: u64,
    memory_mib: u32,
    evict: bool,
    report: PathBuf,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        bos: 24,
        rounds: 3,
        seed: 1,
        memory_mib: 512,
        evict: true,
        report: gpuswap_tests::root().join("target/gpuswap-report.json"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        let number = |v: String| v.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--bos" => o.bos = number(value()?)? as u32,
            "--rounds" => o.rounds = number(value()?)? as u32,
            "--seed" => o.seed = number(value()?)?,
            "--memory" => o.memory_mib = number(value()?)? as u32,
            "--report" => o.report = PathBuf::from(value()?),
            "--no-evict" => o.evict = false,
            "-h" | "--help" => {
                println!("usage: gpuswap-run [--bos N] [--rounds N] [--seed N] [--memory MiB] [--no-evict] [--report PATH]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if o.bos == 0 || o.rounds == 0 {
        return Err("--bos and --rounds must be at least 1".into());
    }
    Ok(o)
}

/// Buffer sizes cycle through these (width, height): from a cursor-sized
/// buffer to a full 1080p frame.
const SIZES: &[(u32, u32)] = &[
    (64, 64),
    (256, 256),
    (640, 480),
    (1024, 768),
    (1920, 1080),
    (128, 32),
];

struct Bo {
    index: u32,
    handle: u64,
    res_id: u64,
    bytes: u64,
}

/// One consistency check: how often it held, and the first failures.
#[derive(Default)]
struct Check {
    passed: u64,
    failed: u64,
    failures: Vec<Value>,
}

impl Check {
    fn record(&mut self, ok: bool, failure: impl FnOnce() -> Value) {
        if ok {
            self.passed += 1;
        } else {
            self.failed += 1;
            if self.failures.len() < 10 {
                self.failures.push(failure());
            }
        }
    }

    fn json(&self) -> Value {
        json!({"passed": self.passed, "failed": self.failed, "failures": self.failures})
    }
}

#[derive(Default)]
struct Checks(BTreeMap<&'static str, Check>);

impl Checks {
    fn get(&mut self, name: &'static str) -> &mut Check {
        self.0.entry(name).or_default()
    }

    fn failed(&self) -> bool {
        self.0.values().any(|c| c.failed > 0)
    }
}

fn main() -> ExitCode {
    let options = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("gpuswap-run: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&options) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("gpuswap-run: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(o: &Options) -> Result<bool, String> {
    let started = Instant::now();
    let images = Images::get();
    let dir = RunDir::new("run");
    let mut daemon = Daemon::start(&images.daemon, &dir, &[])?;
    let config = VmConfig {
        memory_mib: o.memory_mib,
        ..VmConfig::default()
    };
    eprintln!(
        "[run] booting the guest ({} MiB) on gpuswap-daemon",
        o.memory_mib
    );
    let mut vm = Vm::start(&images, &daemon.socket, &dir, &config)?;
    let mut agent = vm.agent(Duration::from_secs(180))?;
    agent.set_timeout(Duration::from_secs(120));
    let guest = agent.request(json!({"op": "hello"}))?;
    let mut control = daemon.control()?;
    let mut checks = Checks::default();

    let mut bos = Vec::new();
    for index in 0..o.bos {
        let (width, height) = SIZES[(index as usize + o.seed as usize) % SIZES.len()];
        let bo = agent.request(json!({"op": "create_2d", "width": width, "height": height}))?;
        bos.push(Bo {
            index,
            handle: bo["handle"].as_u64().ok_or("no handle")?,
            res_id: bo["res_id"].as_u64().ok_or("no res_id")?,
            bytes: u64::from(width) * u64::from(height) * 4,
        });
    }
    let total_bytes: u64 = bos.iter().map(|b| b.bytes).sum();

    for version in 1..=u64::from(o.rounds) {
        eprintln!(
            "[run] round {version}/{}: {} buffers, {:.1} MiB, {:.0} s elapsed",
            o.rounds,
            bos.len(),
            total_bytes as f64 / (1 << 20) as f64,
            started.elapsed().as_secs_f64()
        );
        for bo in &bos {
            let pattern =
                json!({"handle": bo.handle, "seed": o.seed, "bo": bo.index, "version": version});
            let mut write = pattern.clone();
            write["op"] = json!("write");
            let written = agent.request(write)?;
            let hash = written["hash"].clone();
            agent.request(json!({"op": "transfer_to_host", "handle": bo.handle}))?;
            let host = control.resource(bo.res_id)?.unwrap_or(Value::Null);
            checks
                .get("host_copy_matches_guest")
                .record(host["host_hash"] == hash, || {
                    failure(
                        &mut control,
                        bo,
                        version,
                        json!({"guest_hash": hash, "host": host}),
                    )
                });
            checks.get("attached_backing_matches_guest").record(host["backing_hash"] == hash, || {
                json!({"res_id": bo.res_id, "version": version, "guest_hash": hash, "backing_hash": host["backing_hash"]})
            });
            let mut verify = pattern;
            verify["op"] = json!("verify");
            let verified = agent.request(verify)?;
            checks.get("guest_content_intact").record(
                verified["ok_content"] == json!(true),
                || json!({"res_id": bo.res_id, "version": version, "guest": verified}),
            );
        }
        if o.evict && version < u64::from(o.rounds) {
            // Every buffer is idle now: a forced scan of all their pages
            // evicts them (fenced DETACH, pages to swap); the next round's
            // writes fault them back and its transfers re-attach them.
            let pages = total_bytes.div_ceil(4096) + 64;
            let scan = agent
                .request(json!({"op": "shrinker_scan", "pages": pages, "mode": "evict_wait"}))?;
            eprintln!("[run] evicted: {} pages freed", scan["freed"]);
        }
    }
    let shrinker = if o.evict {
        agent.request(json!({"op": "shrinker_stats"}))?
    } else {
        Value::Null
    };
    if o.evict {
        let evictions = shrinker["evictions"].as_u64().unwrap_or(0);
        let restores = shrinker["restores"].as_u64().unwrap_or(0);
        checks.get("evictions_and_restores_happened").record(
            evictions > 0 && restores > 0,
            || json!({"shrinker": shrinker}),
        );
        // Each eviction is a DETACH and each restore a new ATTACH: a buffer
        // that went through every round was attached once per round.
        for bo in &bos {
            let host = control.resource(bo.res_id)?.unwrap_or(Value::Null);
            let generation = host["generation"].as_u64().unwrap_or(0);
            checks.get("host_saw_every_restore").record(generation >= u64::from(o.rounds), || {
                json!({"res_id": bo.res_id, "generation": host["generation"], "rounds": o.rounds})
            });
        }
    }

    for bo in &bos {
        agent.request(json!({"op": "close", "handle": bo.handle}))?;
    }
    let mut left = Vec::new();
    for _ in 0..100 {
        left = control.resources()?;
        if left.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    checks
        .get("no_resource_left_after_close")
        .record(left.is_empty(), || json!({"left": left}));

    let _ = agent.request(json!({"op": "exit", "status": 0}));
    let serial = vm.serial_log.clone();
    let qemu = vm.wait(Duration::from_secs(60));
    checks.get("qemu_exited_cleanly").record(
        matches!(qemu, Ok(s) if s.success()),
        || json!({"qemu": format!("{qemu:?}"), "serial_tail": tail(&serial, 20)}),
    );
    let log = std::fs::read_to_string(&serial).unwrap_or_default();
    let problems = kernel_problems(&log);
    checks
        .get("guest_kernel_log_clean")
        .record(problems.is_empty(), || json!({"lines": problems}));

    let counters = control.counters()?;
    let violations = control.violations()?;
    checks
        .get("no_protocol_violation")
        .record(violations.is_empty(), || json!({"violations": violations}));
    checks.get("daemon_survived").record(
        daemon.alive(),
        || json!({"daemon_log": tail(&daemon.log, 20)}),
    );

    let passed = !checks.failed();
    let report = json!({
        "passed": passed,
        "seed": o.seed,
        "duration_s": started.elapsed().as_secs_f64(),
        "guest": guest,
        "buffers": bos.len(),
        "rounds": o.rounds,
        "buffer_bytes": total_bytes,
        "guest_shrinker": shrinker,
        "checks": checks.0.iter().map(|(k, c)| (k.to_string(), c.json())).collect::<serde_json::Map<_, _>>(),
        "daemon_counters": counters["counters"],
        "reproduce": format!(
            "cargo xtask run -- --bos {} --rounds {} --seed {} --memory {}{}",
            o.bos, o.rounds, o.seed, o.memory_mib, if o.evict { "" } else { " --no-evict" }
        ),
        "logs": dir.0,
    });
    if let Some(parent) = o.report.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    std::fs::write(
        &o.report,
        serde_json::to_string_pretty(&report).unwrap_or_default(),
    )
    .map_err(|e| format!("{}: {e}", o.report.display()))?;
    print_summary(&report, &checks, o);
    let _ = daemon.terminate();
    Ok(passed)
}

/// Context for a host-side mismatch: the daemon's trace of that resource.
fn failure(control: &mut Control, bo: &Bo, version: u64, detail: Value) -> Value {
    let trace = control.trace(0, Some(bo.res_id)).unwrap_or_default();
    let recent: Vec<Value> = trace.iter().rev().take(12).rev().cloned().collect();
    json!({"res_id": bo.res_id, "bo": bo.index, "version": version, "detail": detail, "daemon_trace": recent})
}

fn print_summary(report: &Value, checks: &Checks, o: &Options) {
    println!();
    println!(
        "gpuswap run: {}  ({} buffers x {} rounds, {:.1} MiB, seed {}, {:.0} s)",
        if report["passed"] == json!(true) {
            "PASSED"
        } else {
            "FAILED"
        },
        report["buffers"],
        o.rounds,
        report["buffer_bytes"].as_f64().unwrap_or(0.0) / (1 << 20) as f64,
        o.seed,
        report["duration_s"].as_f64().unwrap_or(0.0)
    );
    for (name, check) in &checks.0 {
        let mark = if check.failed == 0 { "ok  " } else { "FAIL" };
        println!(
            "  {mark} {name:<32} {} passed, {} failed",
            check.passed, check.failed
        );
        for f in &check.failures {
            println!("       {f}");
        }
    }
    let c = &report["daemon_counters"];
    println!(
        "  daemon: {} attaches, {} detaches, {} transfers ({:.1} MiB), {} violations",
        c["attaches"],
        c["detaches"],
        c["transfers"],
        c["bytes_transferred"].as_f64().unwrap_or(0.0) / (1 << 20) as f64,
        c["violations"]
    );
    let g = &report["guest_shrinker"];
    if !g.is_null() {
        println!(
            "  guest shrinker: {} evictions, {} restores, {} purges",
            g["evictions"], g["restores"], g["purges"]
        );
    }
    println!("  report: {}", o.report.display());
    if report["passed"] != json!(true) {
        println!(
            "  reproduce: {}",
            report["reproduce"].as_str().unwrap_or_default()
        );
        println!("  logs: {}", report["logs"]);
    }
}
