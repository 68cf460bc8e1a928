//! The stress run's knobs, their command line, and the command that
//! reproduces a run.

use std::path::PathBuf;
use std::time::Duration;

use super::Scenario;

/// Which pressure mechanisms a run uses (combinable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mechanisms {
    /// virtio-balloon inflation over QMP.
    pub balloon: bool,
    /// Anonymous memory held by the guest agent.
    pub hog: bool,
    /// `echo 3 > /proc/sys/vm/drop_caches` every few seconds.
    pub drop_caches: bool,
    /// The driver's debugfs forced scan every few seconds.
    pub forced_scan: bool,
}

impl Mechanisms {
    const NAMES: [&'static str; 4] = ["balloon", "hog", "drop-caches", "scan"];

    fn parse(list: &str) -> Result<Mechanisms, String> {
        let mut m = Mechanisms {
            balloon: false,
            hog: false,
            drop_caches: false,
            forced_scan: false,
        };
        for name in list.split(',').filter(|s| !s.is_empty()) {
            match name {
                "balloon" => m.balloon = true,
                "hog" => m.hog = true,
                "drop-caches" => m.drop_caches = true,
                "scan" => m.forced_scan = true,
                other => {
                    return Err(format!(
                        "unknown pressure mechanism {other:?} ({})",
                        Self::NAMES.join(", ")
                    ))
                }
            }
        }
        if !(m.balloon || m.hog || m.drop_caches || m.forced_scan) {
            return Err("--pressure needs at least one mechanism".into());
        }
        Ok(m)
    }

    pub fn list(&self) -> String {
        let on = [self.balloon, self.hog, self.drop_caches, self.forced_scan];
        Self::NAMES
            .iter()
            .zip(on)
            .filter(|(_, on)| *on)
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(",")
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub scenario: Scenario,
    /// Workload time (after boot).
    pub duration: Duration,
    /// Pressure cycles in that time.
    pub cycles: u32,
    pub memory_mib: u32,
    pub bos: u32,
    /// BO sizes as width x height at 32 bpp (blobs get the same byte size).
    pub sizes: Vec<(u32, u32)>,
    /// Share of BOs created as guest blobs when the QEMU offers blobs.
    pub blob_share: f64,
    /// Share of BOs that go through madvise DONTNEED / WILLNEED.
    pub madvise_share: f64,
    pub seed: u64,
    pub pressure: Mechanisms,
    /// Peak memory the balloon and the hog take from the guest together.
    pub squeeze_mib: u32,
    /// zram swap in the guest.
    pub zram_mib: u32,
    /// Fault flags for the daemon (`--fault-...`, passed through).
    pub daemon_faults: Vec<String>,
    /// QEMU binary; `None`: the launcher's choice (the blob-capable build
    /// when present).
    pub qemu: Option<PathBuf>,
    pub report: PathBuf,
    /// The timeline picture; default: next to the report, `.svg`.
    pub picture: Option<PathBuf>,
    /// JUnit XML for CI systems: one test case per check.
    pub junit: Option<PathBuf>,
    /// The run on one timeline, as trace-event JSON (Perfetto).
    pub trace: Option<PathBuf>,
    /// Longest the guest may leave the sampler (or a workload request)
    /// unanswered before it counts as a stall.
    pub max_stall: Duration,
    /// Live progress line on stderr (default: when stderr is a terminal).
    pub progress: Option<bool>,
    /// Runs in a row (`--repeat`), stopping at the first that fails.
    pub repeat: u32,
    /// Whether `--seed` was given: a repeat then keeps it for every run
    /// (timing differs), else each run gets a new one.
    pub seed_given: bool,
}

pub const USAGE: &str = "\
usage: gpuswap-run [SCENARIO] [options]

Boots the guest on gpuswap-daemon, squeezes its memory from the host while a
GPU workload runs, and checks that every resource stays consistent.

scenarios: steady (default), sawtooth, spike, soak

options:
  --duration S          workload seconds (default 120; soak 1800)
  --cycles N            pressure cycles in that time (steady 1, sawtooth 4,
                        spike 3, soak 15)
  --memory MiB          guest RAM (default 512)
  --bos N               number of buffers (default 48)
  --sizes WxH,...       buffer sizes (default 64x64,512x512,1024x768,1024x1024,1920x1080)
  --blob-share F        share of guest blobs, 0..1 (default 0.3; 0 with a
                        QEMU that does not offer blobs)
  --madvise-share F     share of buffers going through madvise (default 0.15)
  --seed N              workload and content seed (default 1)
  --repeat N            N runs in a row, each with a new seed (the same one
                        with --seed), a table of their results, stopping at
                        the first failure with its reproduce command
  --pressure LIST       balloon,hog,drop-caches,scan (default balloon,hog)
  --squeeze MiB         peak memory taken by balloon + hog (default 60% of RAM)
  --zram MiB            guest zram swap (default 512)
  --fault-fail-attaches N, --fault-corrupt-transfers N, --fault-delay CMD=MS
                        daemon fault injection (passed through)
  --qemu PATH           QEMU binary (default: the launcher's choice)
  --report PATH         JSON report (default target/gpuswap-report.json)
  --picture PATH        timeline SVG (default: the report path with .svg)
  --junit PATH          JUnit XML, one test case per check (for CI systems)
  --trace PATH          the run on one timeline as trace-event JSON: guest
                        kernel tracepoints, daemon events, workload requests,
                        pressure phases, memory counters (open it in
                        ui.perfetto.dev or chrome://tracing)
  --max-stall S         longest the guest may go without answering the
                        sampler or a workload request (default 5; a run
                        meant to stall, e.g. long fault delays, raises it)
  --progress / --no-progress   live progress line (default: on a terminal)

exit status: 0 every check passed, 1 a check failed (see the report),
2 usage error, 3 the run could not start (images, boot; nothing checked)
";

/// A guest that answers nothing for this long has stalled (the default run
/// answers within about a second; see docs/stress).
const DEFAULT_MAX_STALL: Duration = Duration::from_secs(5);

const DEFAULT_SIZES: &[(u32, u32)] = &[
    (64, 64),
    (512, 512),
    (1024, 768),
    (1024, 1024),
    (1920, 1080),
];

impl Options {
    pub fn new(scenario: Scenario) -> Options {
        let memory_mib = 512;
        Options {
            scenario,
            duration: scenario.default_duration(),
            cycles: scenario.default_cycles(),
            memory_mib,
            bos: 48,
            sizes: DEFAULT_SIZES.to_vec(),
            blob_share: 0.3,
            madvise_share: 0.15,
            seed: 1,
            pressure: Mechanisms {
                balloon: true,
                hog: true,
                drop_caches: false,
                forced_scan: false,
            },
            squeeze_mib: memory_mib * 6 / 10,
            zram_mib: 512,
            daemon_faults: Vec::new(),
            qemu: None,
            report: crate::root().join("target/gpuswap-report.json"),
            picture: None,
            junit: None,
            trace: None,
            max_stall: DEFAULT_MAX_STALL,
            progress: None,
            repeat: 1,
            seed_given: false,
        }
    }

    /// Parses the command line (without the program name).
    pub fn parse(args: &[String]) -> Result<Options, String> {
        let mut args = args.iter().peekable();
        let scenario = match args.peek() {
            Some(a) if !a.starts_with('-') => args.next().map(|a| a.parse()).transpose()?,
            _ => None,
        };
        let mut o = Options::new(scenario.unwrap_or(Scenario::Steady));
        let (mut duration, mut cycles, mut squeeze) = (None, None, None);
        while let Some(flag) = args.next() {
            let mut value = || {
                args.next()
                    .cloned()
                    .ok_or_else(|| format!("{flag} needs a value"))
            };
            let int = |v: String| v.parse::<u64>().map_err(|e| format!("{flag} {v}: {e}"));
            let share = |v: String| match v.parse::<f64>() {
                Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
                _ => Err(format!("{flag} {v}: expected a share between 0 and 1")),
            };
            let small = |n: u64| u32::try_from(n).map_err(|_| format!("{flag}: {n} is too large"));
            match flag.as_str() {
                "--duration" => duration = Some(Duration::from_secs(int(value()?)?)),
                "--cycles" => cycles = Some(small(int(value()?)?)?),
                "--memory" => o.memory_mib = small(int(value()?)?)?,
                "--bos" => o.bos = small(int(value()?)?)?,
                "--sizes" => o.sizes = parse_sizes(&value()?)?,
                "--blob-share" => o.blob_share = share(value()?)?,
                "--madvise-share" => o.madvise_share = share(value()?)?,
                "--seed" => {
                    o.seed = int(value()?)?;
                    o.seed_given = true;
                }
                "--repeat" => {
                    o.repeat = small(int(value()?)?)?;
                    if o.repeat == 0 {
                        return Err("--repeat must be at least 1".into());
                    }
                }
                "--pressure" => o.pressure = Mechanisms::parse(&value()?)?,
                "--squeeze" => squeeze = Some(small(int(value()?)?)?),
                "--zram" => o.zram_mib = small(int(value()?)?)?,
                "--fault-fail-attaches" | "--fault-corrupt-transfers" | "--fault-delay" => {
                    o.daemon_faults.push(flag.clone());
                    o.daemon_faults.push(value()?);
                }
                "--qemu" => o.qemu = Some(PathBuf::from(value()?)),
                "--report" => o.report = PathBuf::from(value()?),
                "--picture" => o.picture = Some(PathBuf::from(value()?)),
                "--junit" => o.junit = Some(PathBuf::from(value()?)),
                "--trace" => o.trace = Some(PathBuf::from(value()?)),
                "--max-stall" => {
                    let v = value()?;
                    let s = v
                        .parse::<f64>()
                        .ok()
                        .filter(|s| s.is_finite() && *s > 0.0 && *s <= 3600.0)
                        .ok_or_else(|| format!("--max-stall {v}: seconds in (0, 3600]"))?;
                    o.max_stall = Duration::from_secs_f64(s);
                }
                "--progress" => o.progress = Some(true),
                "--no-progress" => o.progress = Some(false),
                "-h" | "--help" => return Err(USAGE.into()),
                other => return Err(format!("unknown argument {other:?}\n\n{USAGE}")),
            }
        }
        if let Some(d) = duration {
            o.duration = d;
        }
        if let Some(c) = cycles {
            o.cycles = c;
        }
        o.squeeze_mib = squeeze.unwrap_or(o.memory_mib * 6 / 10);
        o.check()?;
        Ok(o)
    }

    fn check(&self) -> Result<(), String> {
        if self.duration.is_zero() || self.cycles == 0 {
            return Err("--duration and --cycles must be at least 1".into());
        }
        // One buffer stays on scanout; the workload needs at least one more.
        if self.bos < 2 {
            return Err("--bos must be at least 2".into());
        }
        if self.memory_mib < 128 {
            return Err("--memory must be at least 128 MiB".into());
        }
        // The guest needs room for its kernel, the agent and the pages it
        // is restoring: never take more than 85% away.
        if u64::from(self.squeeze_mib) * 100 > u64::from(self.memory_mib) * 85 {
            return Err(format!(
                "--squeeze {} leaves the {} MiB guest too little to run (at most 85%)",
                self.squeeze_mib, self.memory_mib
            ));
        }
        Ok(())
    }

    /// The command line that runs exactly this run again.
    pub fn reproduce_command(&self) -> String {
        let sizes: Vec<String> = self.sizes.iter().map(|(w, h)| format!("{w}x{h}")).collect();
        let mut cmd = format!(
            "cargo xtask run -- {} --duration {} --cycles {} --memory {} --bos {} --sizes {} \
             --blob-share {} --madvise-share {} --seed {} --pressure {} --squeeze {} --zram {} \
             --max-stall {}",
            self.scenario,
            self.duration.as_secs(),
            self.cycles,
            self.memory_mib,
            self.bos,
            sizes.join(","),
            self.blob_share,
            self.madvise_share,
            self.seed,
            self.pressure.list(),
            self.squeeze_mib,
            self.zram_mib,
            self.max_stall.as_secs_f64()
        );
        for f in &self.daemon_faults {
            cmd.push(' ');
            cmd.push_str(f);
        }
        if let Some(q) = &self.qemu {
            cmd.push_str(&format!(" --qemu {}", q.display()));
        }
        cmd
    }

    pub fn picture_path(&self) -> PathBuf {
        self.picture
            .clone()
            .unwrap_or_else(|| self.report.with_extension("svg"))
    }
}

fn parse_sizes(list: &str) -> Result<Vec<(u32, u32)>, String> {
    let sizes: Vec<(u32, u32)> = list
        .split(',')
        .map(|s| {
            let (w, h) = s
                .split_once('x')
                .ok_or_else(|| format!("size {s:?}: expected WxH"))?;
            let w: u32 = w.parse().map_err(|e| format!("size {s:?}: {e}"))?;
            let h: u32 = h.parse().map_err(|e| format!("size {s:?}: {e}"))?;
            if !(1..=4096).contains(&w) || !(1..=4096).contains(&h) {
                return Err(format!("size {s:?}: width and height must be 1..4096"));
            }
            Ok((w, h))
        })
        .collect::<Result<_, _>>()?;
    if sizes.is_empty() {
        return Err("--sizes needs at least one size".into());
    }
    Ok(sizes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Options, String> {
        let args: Vec<String> = line.split_whitespace().map(String::from).collect();
        Options::parse(&args)
    }

    #[test]
    fn bare_command_is_the_steady_scenario() {
        let o = parse("").unwrap();
        assert_eq!(o, Options::new(Scenario::Steady));
        assert_eq!(o.squeeze_mib, 307);
        assert_eq!((o.repeat, o.seed_given), (1, false));
        let r = parse("soak --repeat 20").unwrap();
        assert_eq!((r.repeat, r.seed_given), (20, false));
        assert!(parse("--repeat 3 --seed 9").unwrap().seed_given);
    }

    #[test]
    fn reproduce_command_parses_back_to_the_same_run() {
        let o = parse(
            "sawtooth --duration 30 --cycles 2 --memory 384 --bos 10 --sizes 64x64,128x32 \
             --blob-share 0.5 --madvise-share 0 --seed 77 --pressure hog,scan --squeeze 100 \
             --zram 128 --fault-delay resource_detach_backing=20 --fault-fail-attaches 1",
        )
        .unwrap();
        let again = o.reproduce_command();
        let args: Vec<String> = again
            .strip_prefix("cargo xtask run -- ")
            .unwrap()
            .split_whitespace()
            .map(String::from)
            .collect();
        let mut back = Options::parse(&args).unwrap();
        back.report = o.report.clone();
        back.junit = o.junit.clone();
        assert_eq!(back, o);
    }

    #[test]
    fn bad_arguments_are_refused_with_a_reason() {
        for (line, needle) in [
            ("nosuch", "unknown scenario"),
            ("--bos", "needs a value"),
            ("--bos x", "--bos x"),
            ("--bos 1", "at least 2"),
            ("--cycles 0", "at least 1"),
            ("--blob-share 2", "share between 0 and 1"),
            ("--sizes 10", "expected WxH"),
            ("--sizes 0x5", "1..4096"),
            ("--pressure fire", "unknown pressure mechanism"),
            ("--memory 256 --squeeze 250", "too little"),
            ("--frobnicate", "unknown argument"),
            ("--repeat 0", "at least 1"),
        ] {
            let err = parse(line).unwrap_err();
            assert!(err.contains(needle), "{line}: {err}");
        }
    }
}
