//! `cargo xtask boot-loop N`: boots the guest N times on one gpuswap
//! daemon, runs a short agent exchange each time (a buffer written,
//! transferred and checked on the host), and prints a failure table by
//! signature. Nothing is retried: this is how flaky boots are counted.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use gpuswap_api::agent;
use gpuswap_harness::{kernel_problems, run_dir, tail, Daemon, Images, Vm, VmConfig};
use serde_json::json;

/// How long one boot may take to answer (TCG, debug kernel).
const BOOT: Duration = Duration::from_secs(120);

/// The failure signature of an error message: its first words that do not
/// change from boot to boot.
fn signature(error: &str) -> String {
    const KNOWN: &[(&str, &str)] = &[
        ("no virtio-serial port named", "agent port missing"),
        ("(unnamed)", "agent port unnamed"),
        ("no guest agent within", "agent never answered"),
        ("QEMU exited", "QEMU exited before the agent"),
        (
            "the guest workload exited",
            "workload exited before the agent",
        ),
        ("kernel problems", "kernel problem"),
        ("QEMU did not exit", "reboot hung"),
        ("host copy", "host copy differs"),
    ];
    KNOWN
        .iter()
        .find(|(needle, _)| error.contains(needle))
        .map_or_else(
            || {
                error
                    .split_whitespace()
                    .take(6)
                    .collect::<Vec<_>>()
                    .join(" ")
            },
            |(_, sig)| sig.to_string(),
        )
}

/// One boot: up, agent exchange, clean exit.
fn boot(images: &Images, daemon: &mut Daemon, i: usize) -> Result<(), String> {
    let dir = run_dir(&format!("boot-loop-{i}"));
    let mut vm = Vm::start(images, &daemon.socket, &dir, &VmConfig::default())?;
    let mut agent = vm.agent(BOOT)?;
    let mut control = daemon.control()?;
    let created = agent.request(agent::Create2d {
        width: 64,
        height: 64,
        format: None,
    })?;
    let handle = created.handle;
    let written = agent.request(agent::Write {
        handle,
        seed: i as u64,
        bo: 0,
        version: 1,
        pattern: None,
    })?;
    agent.request(agent::TransferToHost {
        handle,
        ..Default::default()
    })?;
    let res = control
        .resource(created.res_id)?
        .ok_or("the resource is not on the host")?;
    if res.host_hash.as_ref() != Some(&written.hash) {
        return Err(format!("host copy differs: {}", json!(res)));
    }
    agent.request(agent::Close { handle })?;
    let _ = agent.request(agent::Exit { status: Some(0) });
    let serial = vm.serial_log.clone();
    let status = vm
        .wait(Duration::from_secs(60))
        .map_err(|e| format!("QEMU did not exit after the guest rebooted: {e}"))?;
    let log = std::fs::read_to_string(&serial).unwrap_or_default();
    let problems = kernel_problems(&log);
    if !problems.is_empty() {
        return Err(format!("kernel problems: {}", problems.join(" | ")));
    }
    if !status.success() {
        return Err(format!("QEMU exited with {status}: {}", tail(&serial, 10)));
    }
    // Kept only for failures.
    let _ = std::fs::remove_dir_all(dir.path());
    Ok(())
}

/// Boots the guest N times on one daemon and prints a failure table by
/// signature.
#[derive(Debug, Parser)]
#[command(name = "gpuswap-boot-loop")]
struct Args {
    /// Boots to make.
    #[arg(value_parser = clap::value_parser!(u64).range(1..))]
    boots: u64,
}

fn main() -> ExitCode {
    let n = match Args::try_parse() {
        Ok(a) => a.boots as usize,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let images = Images::get();
    let dir = run_dir("boot-loop");
    let mut daemon = match Daemon::start(&images.daemon, &dir, &[]) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("gpuswap-boot-loop: {e}");
            return ExitCode::from(3);
        }
    };
    let started = Instant::now();
    let mut failures: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for i in 0..n {
        let t = Instant::now();
        let result = boot(&images, &mut daemon, i);
        if let Err(e) = &result {
            eprintln!("boot {i}: FAILED: {e}");
            failures.entry(signature(e)).or_default().push(i);
        }
        eprintln!(
            "boot {i}/{n}: {} in {:.1} s ({} failed so far)",
            if result.is_ok() { "ok" } else { "FAILED" },
            t.elapsed().as_secs_f64(),
            failures.values().map(Vec::len).sum::<usize>()
        );
        if !daemon.alive() {
            eprintln!(
                "gpuswap-boot-loop: the daemon died; see {}",
                daemon.log_path().display()
            );
            return ExitCode::from(1);
        }
    }
    let failed: usize = failures.values().map(Vec::len).sum();
    println!(
        "{n} boots in {:.0} s: {} ok, {failed} failed",
        started.elapsed().as_secs_f64(),
        n - failed
    );
    for (sig, boots) in &failures {
        let shown: Vec<String> = boots.iter().take(10).map(usize::to_string).collect();
        println!("  {:>5}  {sig:<36} boots {}", boots.len(), shown.join(" "));
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
