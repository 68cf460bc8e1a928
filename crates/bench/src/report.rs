//! The markdown tables.

use std::fmt::Write;

use serde::{Deserialize, Serialize};

use crate::stats::{Stat, Timing};
use crate::workloads::{AttachPoint, BackendResults, DisplayPoint, Layout};
use crate::Results;

/// `1.23 ms`, `45.6 µs`, three significant digits.
pub fn time(s: f64) -> String {
    let (v, unit) = if s >= 1.0 {
        (s, "s")
    } else if s >= 1e-3 {
        (s * 1e3, "ms")
    } else if s >= 1e-6 {
        (s * 1e6, "µs")
    } else {
        (s * 1e9, "ns")
    };
    format!("{} {unit}", sig3(v))
}

fn sig3(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// `12.3 k/s`.
pub fn rate(per_s: f64) -> String {
    if per_s >= 1e6 {
        format!("{} M/s", sig3(per_s / 1e6))
    } else if per_s >= 1e3 {
        format!("{} k/s", sig3(per_s / 1e3))
    } else {
        format!("{}/s", sig3(per_s))
    }
}

/// `1.23 GB/s` (10^9 bytes).
pub fn bandwidth(bytes: u64, s: f64) -> String {
    format!("{} GB/s", sig3(bytes as f64 / s / 1e9))
}

/// `4 KiB`, `2 MiB`, `1 GiB`, `7.9 MiB`.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if v.fract() == 0.0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// How many times faster `a` is than `b` at the median (b / a).
pub fn speedup(a: &Stat, b: &Stat) -> f64 {
    b.median / a.median
}

fn ratio(v: f64) -> String {
    format!("{v:.2}×")
}

/// `a` against `b` at the median and at the best sample: on a shared
/// machine the median carries the others' load, the min what the code
/// can do.
fn ratios(a: &Stat, b: &Stat) -> String {
    format!("{} (min {})", ratio(speedup(a, b)), ratio(b.min / a.min))
}

fn min_med(s: &Stat) -> String {
    format!("{} / {}", time(s.min), time(s.median))
}

fn cpu(t: &Timing) -> String {
    t.cpu.as_ref().map_or("–".into(), |c| time(c.median))
}

fn find<'a>(r: &'a Results, name: &str) -> Option<&'a BackendResults> {
    r.backends.iter().find(|b| b.backend == name)
}

fn point(b: Option<&BackendResults>, layout: Layout, bytes: u64) -> Option<&AttachPoint> {
    b?.attach_detach
        .iter()
        .find(|p| p.layout == layout && p.bytes == bytes)
}

/// (cycle, per entry, backend CPU per cycle)
fn attach_cells(p: Option<&AttachPoint>) -> [String; 3] {
    let dash = || "–".to_string();
    match p {
        None => [dash(), dash(), dash()],
        Some(p) => match (&p.cycle, &p.refused) {
            (Some(t), _) => [
                min_med(&t.wall),
                time(t.wall.median / p.entries.max(1) as f64),
                cpu(t),
            ],
            (None, Some(why)) => [format!("refused ({why})"), dash(), dash()],
            (None, None) => [dash(), dash(), dash()],
        },
    }
}

type Pick = fn(&BackendResults) -> &Timing;

fn round_trip_rows(depth: usize) -> Vec<(String, Pick)> {
    vec![
        ("RESOURCE_FLUSH, one at a time".into(), |b| {
            &b.round_trips.flush
        }),
        (
            format!("RESOURCE_FLUSH, {depth} pipelined (per request)"),
            |b| &b.round_trips.flush_pipelined,
        ),
        (
            "RESOURCE_CREATE_2D + RESOURCE_UNREF (per pair)".into(),
            |b| &b.round_trips.create_unref,
        ),
    ]
}

/// One target and whether the run met it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Target {
    /// What was wanted.
    pub target: String,
    /// What was measured.
    pub measured: String,
    /// Whether it was met (None: not measured in this run).
    pub met: Option<bool>,
}

/// The performance issue's targets, judged on this run's medians.
pub fn targets(r: &Results) -> Vec<Target> {
    let g = find(r, "gpuswap");
    let c = find(r, "qemu-c");
    let depth = g.map_or(0, |b| b.round_trips.pipeline_depth);
    let mut out = Vec::new();
    for (i, (what, pick)) in round_trip_rows(depth).into_iter().enumerate() {
        // One at a time is where the wake-ups are: 2x there, and below
        // the eventfd floor; 1.5x for the others.
        let (factor, below_floor) = if i == 0 { (2.0, true) } else { (1.5, false) };
        let (measured, met) = match (g, c) {
            (Some(g), Some(c)) => {
                let x = speedup(&pick(g).wall, &pick(c).wall);
                let floor = &r.wakeup_floor;
                let under = pick(g).wall.median < floor.median;
                let mut measured = format!(
                    "{} the C backend's rate at the median ({} vs {}); {} at the min",
                    ratio(x),
                    rate(pick(g).wall.rate()),
                    rate(pick(c).wall.rate()),
                    ratio(pick(c).wall.min / pick(g).wall.min),
                );
                if below_floor {
                    let _ = write!(
                        measured,
                        "; {} against the eventfd floor's {}",
                        time(pick(g).wall.median),
                        time(floor.median)
                    );
                }
                (measured, Some(x >= factor && (!below_floor || under)))
            }
            _ => ("not measured".into(), None),
        };
        let floor = if below_floor {
            ", and below the eventfd floor"
        } else {
            ""
        };
        out.push(Target {
            target: format!("{what}: ≥ {factor}× the C backend{floor}"),
            measured,
            met,
        });
    }
    let (measured, met) =
        match point(g, Layout::Scattered4k, 1 << 30).and_then(|p| p.cycle.as_ref()) {
            Some(t) => (
                format!("{} (min {})", time(t.wall.median), time(t.wall.min)),
                Some(t.wall.median <= 0.003),
            ),
            None => ("not measured".into(), None),
        };
    out.push(Target {
        target: "ATTACH + DETACH of 1 GiB in 4 KiB entries: ≤ 3 ms".into(),
        measured,
        met,
    });
    if let Some(g) = g {
        for t in &g.transfers {
            let Some(m) = r.memcpy.iter().find(|m| m.frame == t.frame) else {
                continue;
            };
            let x = speedup(&t.transfer.wall, &m.gather);
            out.push(Target {
                target: format!("TRANSFER_TO_HOST_2D {}: ≥ 80% of the gather copy", t.frame),
                measured: format!(
                    "{:.0}% ({} vs {}); {:.0}% of memcpy",
                    x * 100.0,
                    bandwidth(t.bytes, t.transfer.wall.median),
                    bandwidth(m.bytes, m.gather.median),
                    speedup(&t.transfer.wall, &m.copy) * 100.0,
                ),
                met: Some(x >= 0.8),
            });
        }
    }
    let (measured, met) = match (evict_4k(g), evict_4k(c)) {
        (Some(ge), Some(ce)) => {
            let x = speedup(&ge.cycle.wall, &ce.cycle.wall);
            (
                format!(
                    "{} ({} vs {} per cycle)",
                    ratios(&ge.cycle.wall, &ce.cycle.wall),
                    time(ge.cycle.wall.median),
                    time(ce.cycle.wall.median)
                ),
                Some(x >= 1.2),
            )
        }
        _ => ("not measured".into(), None),
    };
    out.push(Target {
        target: "evict/restore cycle of a scanned-out 4K frame: ≥ 1.2× the C backend".into(),
        measured,
        met,
    });
    let (measured, met) = match (display(g, "1080p"), display(c, "1080p")) {
        (Some(gd), Some(cd)) => (
            format!(
                "{} ({} vs {} frames/s)",
                ratios(&gd.frame_time.wall, &cd.frame_time.wall),
                frames_per_s(&gd.frame_time.wall),
                frames_per_s(&cd.frame_time.wall)
            ),
            Some(speedup(&gd.frame_time.wall, &cd.frame_time.wall) >= 1.2),
        ),
        _ => ("not measured".into(), None),
    };
    out.push(Target {
        target: "1080p frames to a display peer (TRANSFER + FLUSH + UPDATE): ≥ 1.2× the C backend"
            .into(),
        measured,
        met,
    });
    out
}

fn frames_per_s(s: &Stat) -> String {
    format!("{:.1}", 1.0 / s.median)
}

/// Backend `b`'s display frames of size `frame`.
fn display<'a>(b: Option<&'a BackendResults>, frame: &str) -> Option<&'a DisplayPoint> {
    b?.display.iter().find(|d| d.frame == frame)
}

fn evict_4k(b: Option<&BackendResults>) -> Option<&crate::workloads::EvictPoint> {
    b?.evict_restore.iter().find(|e| e.frame == "4k")
}

/// The whole markdown report.
pub fn markdown<'a>(r: &'a Results) -> String {
    let mut s = String::new();
    let g = find(r, "gpuswap");
    let c = find(r, "qemu-c");
    let m = &r.machine;
    let _ = writeln!(s, "# gpuswap benchmark results ({} run)\n", r.mode);
    let _ = writeln!(
        s,
        "Machine: {} CPUs, {}, {} RAM, Linux {}; {} (qemu-system-gui {}). \
         Load average {} at the start, {} at the end. {} round(s) in {:.0} s.\n",
        m.nproc,
        m.cpu,
        size(m.memory_bytes),
        m.kernel,
        m.qemu,
        m.qemu_system_gui,
        m.loadavg_start,
        m.loadavg_end,
        r.rounds,
        r.seconds
    );
    let _ = writeln!(
        s,
        "Times are *min / median* over all samples of all rounds; ratios use \
         the medians, with the ratio of the mins in brackets. \"gpuswap/C\" is \
         how many times faster gpuswap is (C time ÷ gpuswap time; above 1 \
         means gpuswap is faster). \"CPU\" is the \
         backend process's CPU time per operation (median, all threads, from \
         `/proc/PID/task/*/schedstat`).\n"
    );
    for note in &r.notes {
        let _ = writeln!(s, "> {note}\n");
    }

    let _ = writeln!(s, "## Targets\n");
    let _ = writeln!(s, "| target | measured | met |\n| --- | --- | --- |");
    for t in targets(r) {
        let met = match t.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "–",
        };
        let _ = writeln!(s, "| {} | {} | {met} |", t.target, t.measured);
    }

    let _ = writeln!(s, "\n## 1. Control-queue round trips\n");
    let _ = writeln!(
        s,
        "| request | gpuswap | rate | CPU | QEMU C | rate | CPU | gpuswap/C |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    let depth = g.or(c).map_or(0, |b| b.round_trips.pipeline_depth);
    let f = &r.wakeup_floor;
    let _ = writeln!(
        s,
        "| floor: eventfd ping-pong between two threads, no backend | {} | {} | | | | | |",
        min_med(f),
        rate(f.rate())
    );
    for (what, pick) in round_trip_rows(depth) {
        let cells = |b: Option<&BackendResults>| match b {
            Some(b) => [
                min_med(&pick(b).wall),
                rate(pick(b).wall.rate()),
                cpu(pick(b)),
            ],
            None => ["–".into(), "–".into(), "–".into()],
        };
        let [gt, gr, gc] = cells(g);
        let [ct, cr, cc] = cells(c);
        let x = match (g, c) {
            (Some(g), Some(c)) => ratios(&pick(g).wall, &pick(c).wall),
            _ => "–".into(),
        };
        let _ = writeln!(
            s,
            "| {what} | {gt} | {gr} | {gc} | {ct} | {cr} | {cc} | {x} |"
        );
    }
    if let (Some(g), Some(p)) = (g, find(r, "gpuswap-poll50")) {
        let _ = writeln!(
            s,
            "\nAdaptive polling (`--poll-us 50`) against the same daemon as \
             measured above (default: no polling), in the same rounds:\n\n\
             | request | --poll-us 50 | CPU | default | CPU | polling/not |\n\
             | --- | --- | --- | --- | --- | --- |"
        );
        for (what, pick) in round_trip_rows(depth) {
            let _ = writeln!(
                s,
                "| {what} | {} | {} | {} | {} | {} |",
                min_med(&pick(p).wall),
                cpu(pick(p)),
                min_med(&pick(g).wall),
                cpu(pick(g)),
                ratios(&pick(p).wall, &pick(g).wall)
            );
        }
    }

    for layout in Layout::ALL {
        let _ = writeln!(s, "\n## 2. ATTACH + DETACH, {}\n", layout.label());
        let _ = writeln!(
            s,
            "| backing | entries | gpuswap cycle | per entry | CPU | QEMU C cycle | per entry | CPU | gpuswap/C |\n\
             | ---: | ---: | --- | --- | --- | --- | --- | --- | --- |"
        );
        let sizes: Vec<u64> = g
            .or(c)
            .map(|b| {
                b.attach_detach
                    .iter()
                    .filter(|p| p.layout == layout)
                    .map(|p| p.bytes)
                    .collect()
            })
            .unwrap_or_default();
        for bytes in sizes {
            let gp = point(g, layout, bytes);
            let cp = point(c, layout, bytes);
            let [gt, ge, gc] = attach_cells(gp);
            let [ct, ce, cc] = attach_cells(cp);
            let x = match (
                gp.and_then(|p| p.cycle.as_ref()),
                cp.and_then(|p| p.cycle.as_ref()),
            ) {
                (Some(a), Some(b)) => ratios(&a.wall, &b.wall),
                _ => "–".into(),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {gt} | {ge} | {gc} | {ct} | {ce} | {cc} | {x} |",
                size(bytes),
                layout.entries(bytes)
            );
        }
    }

    let _ = writeln!(
        s,
        "\n## 3. TRANSFER_TO_HOST_2D, whole frame, scattered 4 KiB backing\n"
    );
    let _ = writeln!(
        s,
        "| frame | bytes | memcpy | gather from the scattered pages | gather, destination 16 B past a page | gpuswap | CPU | QEMU C | CPU | gpuswap/memcpy | gpuswap/gather | C/memcpy | gpuswap/C |\n\
         | --- | ---: | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for mc in &r.memcpy {
        let tr = |b: Option<&'a BackendResults>| -> Option<&'a Timing> {
            b.and_then(|b| b.transfers.iter().find(|t| t.frame == mc.frame))
                .map(|t| &t.transfer)
        };
        let cell = |st: &Stat| format!("{} ({})", min_med(st), bandwidth(mc.bytes, st.median));
        let tcell = |t: Option<&Timing>| t.map_or("–".into(), |t| cell(&t.wall));
        let ccell = |t: Option<&Timing>| t.map_or("–".into(), cpu);
        let frac = |t: Option<&Timing>, of: &Stat| {
            t.map_or("–".into(), |t| {
                format!("{:.0}%", speedup(&t.wall, of) * 100.0)
            })
        };
        let x = match (tr(g), tr(c)) {
            (Some(a), Some(b)) => ratios(&a.wall, &b.wall),
            _ => "–".into(),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {x} |",
            mc.frame,
            size(mc.bytes),
            cell(&mc.copy),
            cell(&mc.gather),
            cell(&mc.gather_offset16),
            tcell(tr(g)),
            ccell(tr(g)),
            tcell(tr(c)),
            ccell(tr(c)),
            frac(tr(g), &mc.copy),
            frac(tr(g), &mc.gather),
            frac(tr(c), &mc.copy),
        );
    }

    let _ = writeln!(
        s,
        "\n## 4. Evict/restore cycle (DETACH, ATTACH other pages, TRANSFER, FLUSH, UPDATE verified)\n"
    );
    let _ = writeln!(
        s,
        "| frame | backend | cycle | per MiB | CPU | DETACH | ATTACH | TRANSFER | FLUSH + UPDATE + hash | verified |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | ---: |"
    );
    let frames: Vec<(String, u64, u64)> = g
        .or(c)
        .map(|b| {
            b.evict_restore
                .iter()
                .map(|e| (e.frame.clone(), e.bytes, e.entries))
                .collect()
        })
        .unwrap_or_default();
    for (frame, bytes, entries) in &frames {
        let mib = *bytes as f64 / (1u64 << 20) as f64;
        let name = format!("{frame} ({} in {entries} pages)", size(*bytes));
        for b in [g, c].into_iter().flatten() {
            let Some(e) = b.evict_restore.iter().find(|e| &e.frame == frame) else {
                continue;
            };
            let _ = writeln!(
                s,
                "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                b.backend,
                min_med(&e.cycle.wall),
                time(e.cycle.wall.median / mib),
                cpu(&e.cycle),
                time(e.evict.median),
                time(e.attach.median),
                time(e.transfer.median),
                time(e.verify.median),
                e.verified
            );
        }
        if let (Some(ge), Some(ce)) = (
            g.and_then(|b| b.evict_restore.iter().find(|e| &e.frame == frame)),
            c.and_then(|b| b.evict_restore.iter().find(|e| &e.frame == frame)),
        ) {
            let _ = writeln!(
                s,
                "| {name} | gpuswap/C | {} | | | {} | {} | {} | {} | |",
                ratios(&ge.cycle.wall, &ce.cycle.wall),
                ratios(&ge.evict, &ce.evict),
                ratios(&ge.attach, &ce.attach),
                ratios(&ge.transfer, &ce.transfer),
                ratios(&ge.verify, &ce.verify),
            );
        }
    }

    let _ = writeln!(
        s,
        "\n## 5. Frames to a display peer (TRANSFER, FLUSH, UPDATE received and hashed)\n"
    );
    let _ = writeln!(
        s,
        "| frame | backend | per frame | frames/s | CPU | verified |\n\
         | --- | --- | --- | ---: | --- | ---: |"
    );
    let shown: Vec<&str> = g
        .or(c)
        .map(|b| b.display.iter().map(|d| d.frame.as_str()).collect())
        .unwrap_or_default();
    for frame in shown {
        for (b, d) in [(g, display(g, frame)), (c, display(c, frame))] {
            let (Some(b), Some(d)) = (b, d) else {
                continue;
            };
            let _ = writeln!(
                s,
                "| {frame} ({}) | {} | {} | {} | {} | {} |",
                size(d.bytes),
                b.backend,
                min_med(&d.frame_time.wall),
                frames_per_s(&d.frame_time.wall),
                cpu(&d.frame_time),
                d.verified
            );
        }
        if let (Some(gd), Some(cd)) = (display(g, frame), display(c, frame)) {
            let _ = writeln!(
                s,
                "| {frame} | gpuswap/C | {} | | | |",
                ratios(&gd.frame_time.wall, &cd.frame_time.wall)
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(time(0.0123), "12.3 ms");
        assert_eq!(time(4.56e-6), "4.56 µs");
        assert_eq!(time(2.0), "2.00 s");
        assert_eq!(size(4096), "4 KiB");
        assert_eq!(size(1 << 30), "1 GiB");
        assert_eq!(size(8_294_400), "7.9 MiB");
        assert_eq!(rate(41_234.0), "41.2 k/s");
        assert_eq!(bandwidth(2_000_000_000, 1.0), "2.00 GB/s");
    }
}
