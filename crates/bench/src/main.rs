//! `gpuswap-bench`: runs the benchmarks and writes the JSON results, the
//! markdown tables and the SVG picture. Usually run as `cargo xtask bench`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use gpuswap_bench::backend::C_BACKEND;
use gpuswap_bench::{run, write_outputs, Options};

/// gpuswap-daemon side by side with QEMU's C vhost-user-gpu backend and
/// memcpy, on identical workloads.
#[derive(Debug, Parser)]
#[command(about)]
struct Args {
    /// The few-second version (every workload, tiny sizes).
    #[arg(long)]
    smoke: bool,
    /// The gpuswap-daemon binary (default: next to this program).
    #[arg(long)]
    daemon: Option<PathBuf>,
    /// QEMU's C backend.
    #[arg(long, default_value = C_BACKEND)]
    c_backend: PathBuf,
    /// Measure gpuswap only.
    #[arg(long)]
    no_c_backend: bool,
    /// Rounds of a full run, interleaved across backends and pooled.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Where to write results.json, results.md and attach-detach.svg.
    #[arg(long, default_value = "target/gpuswap-bench")]
    out: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let daemon = args.daemon.unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("gpuswap-daemon")))
            .unwrap_or_else(|| PathBuf::from("gpuswap-daemon"))
    });
    let opts = Options {
        smoke: args.smoke,
        daemon,
        c_backend: (!args.no_c_backend).then_some(args.c_backend),
        rounds: args.rounds,
    };
    let result = run(&opts).and_then(|r| {
        let files = write_outputs(&r, &args.out)?;
        println!("{}", gpuswap_bench::report::markdown(&r));
        for f in files {
            eprintln!("[bench] wrote {}", f.display());
        }
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("[bench] error: {e}");
            ExitCode::FAILURE
        }
    }
}
