//! gpuswap's benchmarks: `gpuswap-daemon` side by side with QEMU's C
//! `vhost-user-gpu` backend, and against `memcpy`, on identical workloads
//! in the same run.
//!
//! Each backend is started fresh on its own socket and driven through the
//! in-process frontend ([`gpuswap_frontend::GpuFrontend`]) with the same
//! requests:
//!
//! 1. control-queue round trips (RESOURCE_FLUSH one at a time and
//!    pipelined; CREATE_2D + UNREF pairs);
//! 2. ATTACH + DETACH cycles from 4 KiB to 1 GiB, as scattered 4 KiB
//!    entries and as 2 MiB contiguous entries;
//! 3. TRANSFER_TO_HOST_2D of 1080p and 4K frames, next to memcpy;
//! 4. an evict/restore cycle verified through the display channel;
//! 5. frames shown through the display channel (transfer, flush, UPDATE).
//!
//! [`run`] measures, [`write_outputs`] writes the JSON, the markdown table
//! and the SVG picture. `cargo xtask bench` is the front door.

pub mod backend;
pub mod machine;
pub mod plot;
pub mod report;
pub mod stats;
pub mod workloads;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::backend::{Backend, Kind};
use crate::machine::Machine;
use crate::stats::{Plan, Stat};
use crate::workloads::{BackendResults, Frame, Layout, MemcpyPoint, Workloads};

/// Everything a run measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Results {
    /// `full` or `smoke`.
    pub mode: String,
    /// Where it ran.
    pub machine: Machine,
    /// Seconds since the Unix epoch at the start.
    pub started_unix: u64,
    /// Rounds pooled into every figure.
    pub rounds: usize,
    /// How long the run took.
    pub seconds: f64,
    /// memcpy of each frame size.
    pub memcpy: Vec<MemcpyPoint>,
    /// Eventfd ping-pong between two threads: the floor under every
    /// one-at-a-time round trip.
    pub wakeup_floor: Stat,
    /// One entry per backend measured.
    pub backends: Vec<BackendResults>,
    /// Anything skipped, and why.
    pub notes: Vec<String>,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// The few-second version.
    pub smoke: bool,
    /// `gpuswap-daemon` to measure.
    pub daemon: PathBuf,
    /// QEMU's `vhost-user-gpu`; None to leave it out.
    pub c_backend: Option<PathBuf>,
    /// Rounds of a full run (a smoke run has one).
    pub rounds: usize,
}

/// The workloads of a full run (about a minute per backend) or a smoke
/// run (a few seconds in all).
pub fn workloads(smoke: bool) -> Workloads {
    if smoke {
        let quick = Plan {
            warmup: 1,
            samples: 3,
            min_samples: 2,
            budget: Duration::from_millis(150),
        };
        return Workloads {
            ram_bytes: 128 << 20,
            rt_batch: 32,
            pipeline_depth: 16,
            rt_plan: quick,
            attach_sizes: vec![4 << 10, 64 << 10, 2 << 20, 4 << 20],
            attach_plan: quick,
            frames: vec![Frame::FHD],
            transfer_plan: quick,
            evict_frames: vec![Frame::FHD],
            evict_plan: quick,
        };
    }
    Workloads {
        // 1 GiB of scattered pages must fit with room to keep them apart.
        ram_bytes: 3 << 30,
        rt_batch: 400,
        pipeline_depth: 64,
        rt_plan: Plan {
            warmup: 1,
            samples: 15,
            min_samples: 7,
            budget: Duration::from_secs(2),
        },
        attach_sizes: (12..=30).map(|s| 1u64 << s).collect(),
        attach_plan: Plan {
            warmup: 1,
            samples: 15,
            min_samples: 5,
            budget: Duration::from_millis(700),
        },
        frames: vec![Frame::FHD, Frame::UHD],
        transfer_plan: Plan {
            warmup: 2,
            samples: 21,
            min_samples: 7,
            budget: Duration::from_millis(1500),
        },
        evict_frames: vec![Frame::FHD, Frame::UHD],
        evict_plan: Plan {
            warmup: 1,
            samples: 15,
            min_samples: 5,
            budget: Duration::from_secs(2),
        },
    }
}

/// Starts backend `kind` fresh and runs every workload on it.
pub fn run_backend(kind: Kind, binary: &Path, w: &Workloads) -> Result<BackendResults, String> {
    let backend = Backend::spawn(kind, binary)?;
    let mut gpu = backend.connect(w.ram_bytes)?;
    let cpu = || backend.cpu_ns();
    let with_log = |what: &str, e: String| {
        format!(
            "{} {what}: {e}\nbackend log:\n{}",
            kind.label(),
            backend.log()
        )
    };
    eprintln!("[bench] {}: round trips", kind.label());
    let round_trips =
        workloads::round_trips(&mut gpu, w, &cpu).map_err(|e| with_log("round trips", e))?;
    let mut attach_detach = Vec::new();
    for layout in Layout::ALL {
        eprintln!(
            "[bench] {}: attach + detach, {}",
            kind.label(),
            layout.label()
        );
        attach_detach.extend(
            workloads::attach_detach(&mut gpu, w, layout, &cpu)
                .map_err(|e| with_log("attach + detach", e))?,
        );
    }
    eprintln!("[bench] {}: transfers", kind.label());
    let transfers =
        workloads::transfers(&mut gpu, w, &cpu).map_err(|e| with_log("transfers", e))?;
    eprintln!("[bench] {}: evict/restore", kind.label());
    let evict_restore =
        workloads::evict_restore(&mut gpu, w, &cpu).map_err(|e| with_log("evict/restore", e))?;
    eprintln!("[bench] {}: display frames", kind.label());
    let display =
        workloads::display_frames(&mut gpu, w, &cpu).map_err(|e| with_log("display frames", e))?;
    drop(gpu);
    Ok(BackendResults {
        backend: kind.name().to_string(),
        binary: backend.binary.display().to_string(),
        round_trips,
        attach_detach,
        transfers,
        evict_restore,
        display,
    })
}

/// Runs memcpy and every backend, `rounds` times over, interleaved
/// (memcpy, gpuswap, C, memcpy, gpuswap, C, ...), each backend started
/// fresh every round; the samples of all rounds are pooled.
pub fn run(opts: &Options) -> Result<Results, String> {
    let started = Instant::now();
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut machine = Machine::probe();
    let w = workloads(opts.smoke);
    let rounds = if opts.smoke { 1 } else { opts.rounds.max(1) };
    let mut notes = Vec::new();
    let mut kinds = vec![
        (Kind::Gpuswap, opts.daemon.clone()),
        (Kind::GpuswapPolling, opts.daemon.clone()),
    ];
    match &opts.c_backend {
        Some(c) if c.exists() => kinds.push((Kind::QemuC, c.clone())),
        Some(c) => notes.push(format!(
            "QEMU's C backend ({}) is not installed: only gpuswap was measured \
             (apt-get install -t bookworm-backports qemu-system-gui)",
            c.display()
        )),
        None => notes.push("QEMU's C backend was left out (--no-c-backend)".into()),
    }
    let mut memcpy: Vec<MemcpyPoint> = Vec::new();
    let mut floor: Option<Stat> = None;
    let mut backends: Vec<BackendResults> = Vec::new();
    for round in 1..=rounds {
        eprintln!("[bench] round {round}/{rounds}: memcpy, wakeup floor");
        let f = workloads::wakeup_floor(&w)?;
        floor = Some(match floor {
            Some(prev) => prev.merged(&f),
            None => f,
        });
        for m in workloads::memcpy(&w)? {
            match memcpy.iter_mut().find(|x| x.frame == m.frame) {
                Some(x) => x.merge(&m),
                None => memcpy.push(m),
            }
        }
        for (kind, binary) in &kinds {
            let r = run_backend(*kind, binary, &w)?;
            match backends.iter_mut().find(|b| b.backend == r.backend) {
                Some(b) => b.merge(r),
                None => backends.push(r),
            }
        }
    }
    machine.loadavg_end = machine::loadavg();
    Ok(Results {
        mode: if opts.smoke { "smoke" } else { "full" }.into(),
        machine,
        started_unix,
        rounds,
        seconds: started.elapsed().as_secs_f64(),
        memcpy,
        wakeup_floor: floor.ok_or("no rounds")?,
        backends,
        notes,
    })
}

/// Output file names inside the output directory.
pub const JSON: &str = "results.json";
/// The markdown tables.
pub const MARKDOWN: &str = "results.md";
/// The scaling picture.
pub const SVG: &str = "attach-detach.svg";

/// Writes `results.json`, `results.md` and `attach-detach.svg` into `dir`;
/// returns their paths.
pub fn write_outputs(r: &Results, dir: &Path) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let json = serde_json::to_string_pretty(r).map_err(|e| format!("JSON: {e}"))?;
    let files = [
        (dir.join(JSON), json + "\n"),
        (dir.join(MARKDOWN), report::markdown(r)),
        (dir.join(SVG), plot::attach_detach_svg(r)?),
    ];
    let mut out = Vec::new();
    for (path, text) in files {
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        out.push(path);
    }
    Ok(out)
}
