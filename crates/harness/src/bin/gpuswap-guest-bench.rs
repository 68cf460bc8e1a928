//! `cargo xtask bench --guest`: the guest side of reclaim, measured against
//! the kernel's own swap path in the same guest boot. Boots a guest on the
//! gpuswap daemon, runs `gpuswap-guest reclaim-bench` through the agent
//! (see that module for what is measured), and writes its JSON and a
//! Markdown table for docs/benchmarks.md.
//!
//! usage: gpuswap-guest-bench [--bos N] [--rounds R] [--memory MiB] [--out DIR]
//! (`--help` says more).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use gpuswap_api::agent;
use gpuswap_harness::{boot_guest, Images, VmConfig};
use serde_json::{json, Value};

/// The guest side of reclaim, measured against the kernel's own swap path
/// in one guest boot.
#[derive(Debug, Parser)]
#[command(name = "gpuswap-guest-bench")]
struct Args {
    /// Idle 4 MiB BOs evicted and restored per round.
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u32).range(2..))]
    bos: u32,
    /// Rounds (each in the same boot); the tables show medians.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Guest RAM in MiB (zram swap gets as much).
    #[arg(long = "memory", value_name = "MiB", default_value_t = 512)]
    memory_mib: u32,
    /// Where guest.json and guest.md go [default: target/bench-guest].
    #[arg(long)]
    out: Option<PathBuf>,
}

fn run(a: &Args) -> Result<Value, String> {
    let images = Images::get();
    // zram as large as the guest: every BO and the anonymous copy fit.
    let config = VmConfig {
        memory_mib: a.memory_mib,
        append: format!("gpuswap.cmd=agent gpuswap.zram={}M", a.memory_mib),
        ..VmConfig::default()
    };
    let mut booted = boot_guest(&images, "bench-guest", &config, &[])?;
    booted.agent.set_timeout(Duration::from_secs(600));
    let hello = booted.agent.request(agent::Hello {})?;
    let argv = [
        "/bin/gpuswap-guest".to_string(),
        "reclaim-bench".into(),
        "--bos".into(),
        a.bos.to_string(),
        "--rounds".into(),
        a.rounds.to_string(),
    ];
    let (run, line) = booted.agent.request_with_line(agent::Run {
        argv: argv.to_vec(),
    })?;
    let _ = booted.agent.request(agent::Exit { status: Some(0) });
    let _ = booted.vm.wait(Duration::from_secs(60));
    if run.status != Some(0) {
        return Err(format!("reclaim-bench failed: {line}"));
    }
    let result: Value = serde_json::from_str(&run.stdout)
        .map_err(|e| format!("reclaim-bench printed no JSON ({e}): {line}"))?;
    Ok(json!({
        "guest": {"kernel": hello.kernel, "clocksource": hello.clocksource,
                  "memory_mib": a.memory_mib},
        "bench": result,
    }))
}

fn table(v: &Value) -> String {
    let m = &v["bench"]["median"];
    let f = |k: &str| m[k].as_f64().map_or("?".into(), |x| format!("{x:.1}"));
    let round0 = |k: &str| {
        v["bench"]["rounds"][0][k]
            .as_f64()
            .map_or("?".into(), |x| format!("{x:.0}"))
    };
    let ratio = |a: &str, b: &str| match (m[a].as_f64(), m[b].as_f64()) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "?".into(),
    };
    format!(
        "Guest {} ({} clocksource, {} MiB, TCG), {} BOs of {} MiB, median of {} rounds:\n\n\
         | | gpuswap shrinker | kernel swap (same bytes, same zram) | ratio |\n\
         | --- | --- | --- | --- |\n\
         | eviction throughput (MiB/s) | {} (forced scan: DETACH, pages to shmem) | {} (`MADV_PAGEOUT`: into zram) | {} |\n\
         | first CPU touch p50 / p99 (ms) | {} / {} (whole BO back) | {} / {} (one page) | |\n\
         | swap-in of 4 MiB p50 / p99 (ms) | {} / {} (first touch) | {} / {} (every page touched) | {} |\n\
         | first transfer p50 / p99 (ms) | {} / {} (swap-in, ATTACH, TRANSFER, fence) | | |\n\n\
         Ratios: the kernel's time over the shrinker's (above 1: the shrinker's \
         path is faster). The scan leaves the pages in shmem, which writes them \
         to zram when reclaim gets to them, at the page-out's cost: a whole \
         eviction costs both. Half the BOs are touched, the other half \
         transferred. Before them, memory pressure pushed {} MiB of shmem \
         (the {} MiB of evicted BO pages, and older shmem first) into zram \
         (first round).\n",
        v["guest"]["kernel"].as_str().unwrap_or("?"),
        v["guest"]["clocksource"].as_str().unwrap_or("?"),
        v["guest"]["memory_mib"],
        v["bench"]["bos"],
        v["bench"]["bo_mib"],
        v["bench"]["rounds"].as_array().map_or(0, Vec::len),
        f("evict_mib_per_s"),
        f("pageout_mib_per_s"),
        ratio("evict_mib_per_s", "pageout_mib_per_s"),
        f("bo_first_touch_ms_p50"),
        f("bo_first_touch_ms_p99"),
        f("anon_first_touch_ms_p50"),
        f("anon_first_touch_ms_p99"),
        f("bo_first_touch_ms_p50"),
        f("bo_first_touch_ms_p99"),
        f("anon_chunk_swapin_ms_p50"),
        f("anon_chunk_swapin_ms_p99"),
        ratio("anon_chunk_swapin_ms_p50", "bo_first_touch_ms_p50"),
        f("bo_first_transfer_ms_p50"),
        f("bo_first_transfer_ms_p99"),
        round0("shmem_mib_pushed_to_swap"),
        v["bench"]["bos"].as_u64().unwrap_or(0) * v["bench"]["bo_mib"].as_u64().unwrap_or(0),
    )
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| gpuswap_harness::root().join("target/bench-guest"));
    match run(&args) {
        Ok(v) => {
            let md = table(&v);
            print!("{md}");
            let written = std::fs::create_dir_all(&out)
                .and_then(|()| {
                    std::fs::write(
                        out.join("guest.json"),
                        serde_json::to_string_pretty(&v).unwrap_or_default(),
                    )
                })
                .and_then(|()| std::fs::write(out.join("guest.md"), &md));
            match written {
                Ok(()) => {
                    println!("written: {}", out.join("guest.{json,md}").display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("gpuswap-guest-bench: {}: {e}", out.display());
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!("gpuswap-guest-bench: {e}");
            ExitCode::from(3)
        }
    }
}
