//! The benchmark's smoke mode against both backends, so the benchmark code
//! cannot rot: every workload runs (tiny sizes, few samples) and the JSON,
//! the tables and the picture must be well-formed. Skips the C backend
//! loudly, and only it, if QEMU's `vhost-user-gpu` is not installed.

use std::path::{Path, PathBuf};
use std::process::Command;

use gpuswap_bench::backend::C_BACKEND;
use gpuswap_bench::stats::{Stat, Timing};
use gpuswap_bench::workloads::Layout;
use gpuswap_bench::{run, workloads, write_outputs, Options, Results, JSON, MARKDOWN, SVG};

/// The daemon to measure: `GPUSWAP_DAEMON` (what `cargo xtask test` sets),
/// else the one Cargo built next to this test (`cargo test --workspace`
/// builds it for the daemon's own tests), else built here.
fn daemon() -> PathBuf {
    if let Some(p) = std::env::var_os("GPUSWAP_DAEMON") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test path");
    // target/<profile>/deps/smoke-<hash>
    let profile_dir = exe.parent().and_then(Path::parent).expect("target dir");
    let beside = profile_dir.join("gpuswap-daemon");
    if beside.exists() {
        return beside;
    }
    // Its own target dir: the one running this test may be locked.
    let target = profile_dir
        .parent()
        .map_or_else(|| PathBuf::from("target"), Path::to_path_buf)
        .join("bench-smoke-daemon");
    let status = Command::new(env!("CARGO"))
        .args(["build", "-p", "gpuswap-daemon", "--target-dir"])
        .arg(&target)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo build -p gpuswap-daemon");
    assert!(status.success(), "building gpuswap-daemon failed");
    target.join("debug").join("gpuswap-daemon")
}

fn check_stat(what: &str, s: &Stat) {
    assert!(
        s.samples > 0 && s.samples == s.values.len(),
        "{what}: {s:?}"
    );
    assert!(s.batch > 0, "{what}: {s:?}");
    for v in [s.min, s.median].iter().chain(&s.values) {
        assert!(v.is_finite() && *v > 0.0, "{what}: {s:?}");
    }
    assert!(s.min <= s.median, "{what}: {s:?}");
}

fn check_timing(what: &str, t: &Timing) {
    check_stat(what, &t.wall);
    let cpu = t
        .cpu
        .as_ref()
        .unwrap_or_else(|| panic!("{what}: no CPU time"));
    // A backend may do a tiny request within one scheduler accounting
    // step, so CPU samples can be 0; they are never negative or NaN.
    assert!(
        cpu.values.iter().all(|v| v.is_finite() && *v >= 0.0),
        "{what}: {cpu:?}"
    );
    assert!(
        cpu.median > 0.0,
        "{what}: backend CPU time is all zero: {cpu:?}"
    );
}

fn check(r: &Results, with_c: bool) {
    let w = workloads(true);
    assert_eq!(r.mode, "smoke");
    assert!(r.machine.nproc > 0 && !r.machine.kernel.is_empty());
    check_stat("wakeup floor", &r.wakeup_floor);
    assert_eq!(r.memcpy.len(), w.frames.len());
    for m in &r.memcpy {
        check_stat("memcpy", &m.copy);
        check_stat("gather", &m.gather);
        check_stat("gather, offset 16", &m.gather_offset16);
    }
    let names: Vec<&str> = r.backends.iter().map(|b| b.backend.as_str()).collect();
    assert_eq!(
        names,
        if with_c {
            vec!["gpuswap", "gpuswap-poll50", "qemu-c"]
        } else {
            vec!["gpuswap", "gpuswap-poll50"]
        }
    );
    for b in &r.backends {
        let n = &b.backend;
        check_timing(&format!("{n} flush"), &b.round_trips.flush);
        check_timing(&format!("{n} pipelined"), &b.round_trips.flush_pipelined);
        check_timing(&format!("{n} create+unref"), &b.round_trips.create_unref);
        assert_eq!(
            b.attach_detach.len(),
            Layout::ALL.len() * w.attach_sizes.len()
        );
        for p in &b.attach_detach {
            // Smoke sizes are far below both backends' entry caps.
            let t = p
                .cycle
                .as_ref()
                .unwrap_or_else(|| panic!("{n} refused {p:?}"));
            check_timing(&format!("{n} attach {:?} {}", p.layout, p.bytes), t);
            assert_eq!(p.entries, p.layout.entries(p.bytes));
        }
        assert_eq!(b.transfers.len(), w.frames.len());
        for t in &b.transfers {
            check_timing(&format!("{n} transfer {}", t.frame), &t.transfer);
        }
        assert_eq!(b.evict_restore.len(), w.evict_frames.len());
        for e in &b.evict_restore {
            check_timing(&format!("{n} evict {}", e.frame), &e.cycle);
            for (what, s) in [
                ("evict", &e.evict),
                ("attach", &e.attach),
                ("transfer", &e.transfer),
                ("verify", &e.verify),
            ] {
                check_stat(&format!("{n} evict/restore {what}"), s);
            }
            assert_eq!(
                e.verified, e.cycle.wall.samples,
                "{n}: every cycle verified"
            );
        }
        assert_eq!(b.display.len(), w.evict_frames.len());
        for d in &b.display {
            check_timing(&format!("{n} display {}", d.frame), &d.frame_time);
            assert_eq!(
                d.verified, d.frame_time.wall.samples,
                "{n}: every frame verified"
            );
        }
    }
}

#[test]
fn smoke_benchmark_against_both_backends_is_well_formed() {
    let with_c = Path::new(C_BACKEND).exists();
    if !with_c {
        eprintln!(
            "\n\n!!!!!!!! {C_BACKEND} is not installed: the smoke benchmark runs \
             against gpuswap only (apt-get install -t bookworm-backports \
             qemu-system-gui) !!!!!!!!\n"
        );
    }
    let opts = Options {
        smoke: true,
        daemon: daemon(),
        c_backend: Some(PathBuf::from(C_BACKEND)),
        rounds: 1,
    };
    let results = run(&opts).unwrap_or_else(|e| panic!("smoke run: {e}"));
    check(&results, with_c);

    let dir = std::env::temp_dir().join(format!("gpuswap-bench-smoke-{}", std::process::id()));
    let files = write_outputs(&results, &dir).expect("write outputs");
    assert_eq!(files.len(), 3);

    // The JSON reads back into the same results.
    let json = std::fs::read_to_string(dir.join(JSON)).unwrap();
    let back: Results = serde_json::from_str(&json).expect("results.json parses");
    check(&back, with_c);

    // Every table and every row is there, with numbers in it.
    let md = std::fs::read_to_string(dir.join(MARKDOWN)).unwrap();
    for heading in [
        "## Targets",
        "## 1. Control-queue round trips",
        "## 2. ATTACH + DETACH, scattered 4 KiB entries",
        "## 2. ATTACH + DETACH, 2 MiB contiguous entries",
        "## 3. TRANSFER_TO_HOST_2D",
        "## 4. Evict/restore cycle",
        "## 5. Frames to a display peer",
    ] {
        assert!(md.contains(heading), "no {heading:?} in\n{md}");
    }
    let row = |prefix: &str| {
        md.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no row {prefix:?} in\n{md}"))
            .to_string()
    };
    let shown = row("| 1080p (7.9 MiB) | gpuswap |");
    assert!(shown.contains("ms"), "{shown}");
    let flush = row("| RESOURCE_FLUSH, one at a time |");
    assert!(flush.contains("µs"), "{flush}");
    if with_c {
        assert!(flush.trim_end().ends_with("×) |"), "no ratio in {flush}");
    }
    for bytes in workloads(true).attach_sizes {
        let size = gpuswap_bench::report::size(bytes);
        let rows = md
            .lines()
            .filter(|l| l.starts_with(&format!("| {size} |")))
            .count();
        assert_eq!(rows, 2, "one {size} row per layout in\n{md}");
    }
    assert!(row("| 1080p |").contains("GB/s"));
    assert!(row("| 1080p (").contains("gpuswap"));
    assert!(!md.contains("NaN") && !md.contains("inf "), "{md}");

    let svg = std::fs::read_to_string(dir.join(SVG)).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    for l in Layout::ALL {
        assert!(
            svg.contains(&format!("gpuswap, {}", l.label())),
            "legend for {l:?}"
        );
        if with_c {
            assert!(
                svg.contains(&format!("QEMU C, {}", l.label())),
                "legend for {l:?}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
