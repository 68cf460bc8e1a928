//! The benchmark's round trips (workload 1) against one fresh backend for
//! longer than a benchmark run takes, so that the backend can be profiled
//! alone:
//!
//! ```text
//! cargo build --release -p gpuswap-daemon -p gpuswap-bench --examples
//! ./target/release/examples/round_trip_profile 8 gpuswap &   # prints the backend's pid
//! perf record -e cpu-clock -g --clockid monotonic -p PID -o /tmp/rt.data -- sleep 25
//! perf report -i /tmp/rt.data --time START,END --no-children --sort sym
//! ```
//!
//! The three kinds of request run one after the other, each for SECONDS
//! (default 8): RESOURCE_FLUSH one at a time, pipelined, then
//! RESOURCE_CREATE_2D + RESOURCE_UNREF pairs. Each phase's CLOCK_MONOTONIC
//! interval is printed in the form `perf report --time` takes; only the
//! whole run's is known from outside, so the phases are printed as the
//! expected thirds of it and the measured rates with them.

use std::path::PathBuf;
use std::time::Duration;

use gpuswap_bench::backend::{Backend, Kind, C_BACKEND};
use gpuswap_bench::stats::Plan;
use gpuswap_bench::{workloads, workloads::Workloads};
use nix::time::{clock_gettime, ClockId};

fn monotonic() -> f64 {
    let t = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    t.tv_sec() as f64 + t.tv_nsec() as f64 * 1e-9
}

fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args
        .next()
        .map_or(Ok(8), |s| s.parse())
        .map_err(|e| format!("SECONDS: {e}"))?;
    let (kind, binary) = match args.next().as_deref() {
        None | Some("gpuswap") => {
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            // target/release/examples/ -> target/release/gpuswap-daemon
            let daemon = exe
                .parent()
                .and_then(|d| d.parent())
                .map(|d| d.join("gpuswap-daemon"))
                .ok_or("no target directory")?;
            (Kind::Gpuswap, daemon)
        }
        Some("qemu-c") => (Kind::QemuC, PathBuf::from(C_BACKEND)),
        Some(other) => return Err(format!("backend {other:?}: gpuswap or qemu-c")),
    };
    let mut w: Workloads = gpuswap_bench::workloads(false);
    w.ram_bytes = 256 << 20;
    w.rt_plan = Plan {
        warmup: 1,
        samples: 100_000,
        min_samples: 1,
        budget: Duration::from_secs(seconds),
    };
    let backend = Backend::spawn(kind, &binary)?;
    let mut gpu = backend.connect(w.ram_bytes)?;
    println!("backend pid {}", backend.pid());
    // Time to attach a profiler.
    std::thread::sleep(Duration::from_secs(1));
    let cpu = || backend.cpu_ns();
    let start = monotonic();
    let rt = workloads::round_trips(&mut gpu, &w, &cpu)?;
    let end = monotonic();
    let third = (end - start) / 3.0;
    for (i, (what, t)) in [
        ("RESOURCE_FLUSH, one at a time", &rt.flush),
        (
            "RESOURCE_FLUSH, pipelined (per request)",
            &rt.flush_pipelined,
        ),
        ("CREATE_2D + UNREF (per pair)", &rt.create_unref),
    ]
    .into_iter()
    .enumerate()
    {
        let from = start + third * i as f64;
        println!(
            "{what}: median {:.2} us, backend CPU {:.2} us; --time {:.6},{:.6}",
            t.wall.median * 1e6,
            t.cpu.as_ref().map_or(f64::NAN, |c| c.median * 1e6),
            from,
            from + third
        );
    }
    Ok(())
}
