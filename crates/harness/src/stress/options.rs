//! The stress run's knobs, their command line, and the command that
//! reproduces a run.

use std::convert::Infallible;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser};

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
    /// Arm one refused ATTACH_BACKING this often, through the control
    /// socket (`--fail-attach-every`).
    pub fail_attach_every: Option<Duration>,
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

/// `gpuswap-run`'s command line as clap reads it; [`Options::try_parse_from`]
/// turns it into [`Options`]. Every option is optional here: the defaults
/// depend on the scenario and on each other (see [`Options::new`]).
/// A repeated option's last value wins, and a value may start with `-`.
#[derive(Debug, Parser)]
#[command(
    name = "gpuswap-run",
    about = "Boots the guest on gpuswap-daemon, squeezes its memory from the host while a \
             GPU workload runs, and checks that every resource stays consistent.",
    override_usage = "gpuswap-run [SCENARIO] [OPTIONS]",
    after_help = "exit status: 0 every check passed, 1 a check failed (see the report), \
                  2 usage error, 3 the run could not start (images, boot; nothing checked)",
    args_override_self = true
)]
struct Cli {
    /// steady (default), sawtooth, spike, soak
    #[arg(value_name = "SCENARIO", value_parser = scenario)]
    scenario: Option<Scenario>,
    /// workload seconds (default 120; soak 1800)
    #[arg(long, value_name = "S", allow_hyphen_values = true, value_parser = whole)]
    duration: Option<u64>,
    /// pressure cycles in that time (steady 1, sawtooth 4, spike 3, soak 15)
    #[arg(long, value_name = "N", allow_hyphen_values = true, value_parser = small)]
    cycles: Option<u32>,
    /// guest RAM (default 512)
    #[arg(long, value_name = "MiB", allow_hyphen_values = true, value_parser = small)]
    memory: Option<u32>,
    /// number of buffers (default 48)
    #[arg(long, value_name = "N", allow_hyphen_values = true, value_parser = small)]
    bos: Option<u32>,
    /// buffer sizes (default 64x64,512x512,1024x768,1024x1024,1920x1080)
    #[arg(long, value_name = "WxH,...", allow_hyphen_values = true, value_parser = parse_sizes)]
    sizes: Option<Sizes>,
    /// share of guest blobs, 0..1 (default 0.3; 0 with a QEMU that does not
    /// offer blobs)
    #[arg(long, value_name = "F", allow_hyphen_values = true, value_parser = share)]
    blob_share: Option<f64>,
    /// share of buffers going through madvise (default 0.15)
    #[arg(long, value_name = "F", allow_hyphen_values = true, value_parser = share)]
    madvise_share: Option<f64>,
    /// workload and content seed (default 1)
    #[arg(long, value_name = "N", allow_hyphen_values = true, value_parser = whole)]
    seed: Option<u64>,
    /// N runs in a row, each with a new seed (the same one with --seed), a
    /// table of their results, stopping at the first failure with its
    /// reproduce command
    #[arg(long, value_name = "N", allow_hyphen_values = true, value_parser = repeat)]
    repeat: Option<u32>,
    /// balloon,hog,drop-caches,scan (default balloon,hog)
    #[arg(long, value_name = "LIST", allow_hyphen_values = true, value_parser = Mechanisms::parse)]
    pressure: Option<Mechanisms>,
    /// peak memory taken by balloon + hog (default 60% of RAM)
    #[arg(long, value_name = "MiB", allow_hyphen_values = true, value_parser = small)]
    squeeze: Option<u32>,
    /// guest zram swap (default 512)
    #[arg(long, value_name = "MiB", allow_hyphen_values = true, value_parser = small)]
    zram: Option<u32>,
    /// daemon fault injection: fail the next N ATTACH_BACKINGs (passed
    /// through to gpuswap-daemon)
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    fault_fail_attaches: Vec<String>,
    /// daemon fault injection: corrupt the host copy after the next N
    /// transfers (passed through to gpuswap-daemon)
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    fault_corrupt_transfers: Vec<String>,
    /// daemon fault injection: complete every request of type CMD MS ms
    /// late (passed through to gpuswap-daemon)
    #[arg(long, value_name = "CMD=MS", allow_hyphen_values = true)]
    fault_delay: Vec<String>,
    /// have the daemon refuse one ATTACH_BACKING every S seconds of the
    /// workload (armed through its control socket once the last one
    /// fired): the guest must fail that use with EIO and attach again on
    /// the next
    #[arg(long, value_name = "S", allow_hyphen_values = true, value_parser = period)]
    fail_attach_every: Option<Duration>,
    /// QEMU binary (default: the launcher's choice)
    #[arg(long, value_name = "PATH", allow_hyphen_values = true, value_parser = path)]
    qemu: Option<PathBuf>,
    /// JSON report (default target/gpuswap-report.json)
    #[arg(long, value_name = "PATH", allow_hyphen_values = true, value_parser = path)]
    report: Option<PathBuf>,
    /// timeline SVG (default: the report path with .svg)
    #[arg(long, value_name = "PATH", allow_hyphen_values = true, value_parser = path)]
    picture: Option<PathBuf>,
    /// JUnit XML, one test case per check (for CI systems)
    #[arg(long, value_name = "PATH", allow_hyphen_values = true, value_parser = path)]
    junit: Option<PathBuf>,
    /// the run on one timeline as trace-event JSON: guest kernel
    /// tracepoints, daemon events, workload requests, pressure phases,
    /// memory counters (open it in ui.perfetto.dev or chrome://tracing)
    #[arg(long, value_name = "PATH", allow_hyphen_values = true, value_parser = path)]
    trace: Option<PathBuf>,
    /// longest the guest may go without answering the sampler or a
    /// workload request (default 5; a run meant to stall, e.g. long fault
    /// delays, raises it)
    #[arg(long, value_name = "S", allow_hyphen_values = true, value_parser = max_stall)]
    max_stall: Option<Duration>,
    /// live progress line (default: on a terminal)
    #[arg(long, overrides_with = "no_progress")]
    progress: bool,
    /// no live progress line
    #[arg(long, overrides_with = "progress")]
    no_progress: bool,
}

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
            fail_attach_every: None,
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

    /// Parses `gpuswap-run`'s command line (`args` starts with the
    /// program name, as `std::env::args_os()` does). The error is clap's:
    /// `--help` (print it, exit 0) or a usage error (print it, exit 2).
    pub fn try_parse_from<I, T>(args: I) -> Result<Options, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let mut command = Cli::command();
        let matches = command.try_get_matches_from_mut(args)?;
        let cli = Cli::from_arg_matches(&matches)?;
        Options::from_cli(cli, &matches).map_err(|e| command.error(ErrorKind::ValueValidation, e))
    }

    /// The options `cli` gives, the defaults of its scenario for the rest.
    fn from_cli(cli: Cli, matches: &ArgMatches) -> Result<Options, String> {
        let mut o = Options::new(cli.scenario.unwrap_or(Scenario::Steady));
        if let Some(d) = cli.duration {
            o.duration = Duration::from_secs(d);
        }
        o.cycles = cli.cycles.unwrap_or(o.cycles);
        o.memory_mib = cli.memory.unwrap_or(o.memory_mib);
        o.bos = cli.bos.unwrap_or(o.bos);
        o.sizes = cli.sizes.unwrap_or(o.sizes);
        o.blob_share = cli.blob_share.unwrap_or(o.blob_share);
        o.madvise_share = cli.madvise_share.unwrap_or(o.madvise_share);
        if let Some(seed) = cli.seed {
            o.seed = seed;
            o.seed_given = true;
        }
        o.repeat = cli.repeat.unwrap_or(o.repeat);
        o.pressure = cli.pressure.unwrap_or(o.pressure);
        o.squeeze_mib = cli.squeeze.unwrap_or(o.memory_mib * 6 / 10);
        o.zram_mib = cli.zram.unwrap_or(o.zram_mib);
        // The fault flags go to the daemon in the order they were given.
        let mut faults: Vec<(usize, &str, String)> = Vec::new();
        for (id, flag, values) in [
            (
                "fault_fail_attaches",
                "--fault-fail-attaches",
                cli.fault_fail_attaches,
            ),
            (
                "fault_corrupt_transfers",
                "--fault-corrupt-transfers",
                cli.fault_corrupt_transfers,
            ),
            ("fault_delay", "--fault-delay", cli.fault_delay),
        ] {
            let at = matches.indices_of(id).into_iter().flatten();
            faults.extend(at.zip(values).map(|(i, v)| (i, flag, v)));
        }
        faults.sort_by_key(|(i, _, _)| *i);
        o.daemon_faults = faults
            .into_iter()
            .flat_map(|(_, flag, value)| [flag.to_string(), value])
            .collect();
        o.fail_attach_every = cli.fail_attach_every;
        o.qemu = cli.qemu;
        o.report = cli.report.unwrap_or(o.report);
        o.picture = cli.picture;
        o.junit = cli.junit;
        o.trace = cli.trace;
        o.max_stall = cli.max_stall.unwrap_or(o.max_stall);
        // At most one of the two is set: the last given overrides the other.
        if cli.progress {
            o.progress = Some(true);
        } else if cli.no_progress {
            o.progress = Some(false);
        }
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
        if let Some(every) = self.fail_attach_every {
            cmd.push_str(&format!(" --fail-attach-every {}", every.as_secs()));
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

/// Buffer sizes as `--sizes` gives them: one value, not one per size (an
/// alias, so that clap does not take it for a repeated option).
type Sizes = Vec<(u32, u32)>;

fn parse_sizes(list: &str) -> Result<Sizes, String> {
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

// The value parsers of [`Cli`]. clap's message names the option and the
// value; theirs says what is wrong with it.

fn scenario(name: &str) -> Result<Scenario, String> {
    name.parse()
}

fn whole(v: &str) -> Result<u64, String> {
    v.parse::<u64>().map_err(|e| e.to_string())
}

fn small(v: &str) -> Result<u32, String> {
    let n = whole(v)?;
    u32::try_from(n).map_err(|_| format!("{n} is too large"))
}

fn repeat(v: &str) -> Result<u32, String> {
    match small(v)? {
        0 => Err("must be at least 1".into()),
        n => Ok(n),
    }
}

fn share(v: &str) -> Result<f64, String> {
    match v.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err("expected a share between 0 and 1".into()),
    }
}

fn period(v: &str) -> Result<Duration, String> {
    match whole(v)? {
        s @ 1..=3600 => Ok(Duration::from_secs(s)),
        _ => Err("whole seconds in 1..=3600".into()),
    }
}

fn max_stall(v: &str) -> Result<Duration, String> {
    v.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0 && *s <= 3600.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| "seconds in (0, 3600]".into())
}

/// Any path, the empty one too (clap's own `PathBuf` parser refuses that).
fn path(v: &str) -> Result<PathBuf, Infallible> {
    Ok(PathBuf::from(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `gpuswap-run LINE`, as the program parses it.
    fn parse_args<'a>(args: impl IntoIterator<Item = &'a str>) -> Result<Options, clap::Error> {
        Options::try_parse_from(std::iter::once("gpuswap-run").chain(args))
    }

    fn parse(line: &str) -> Result<Options, String> {
        parse_args(line.split_whitespace()).map_err(|e| e.to_string())
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
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
    fn defaults_follow_the_scenario_and_the_memory() {
        let soak = parse("soak").unwrap();
        assert_eq!((soak.duration.as_secs(), soak.cycles), (1800, 15));
        let saw = parse("sawtooth --duration 30").unwrap();
        assert_eq!((saw.duration.as_secs(), saw.cycles), (30, 4));
        assert_eq!(parse("--memory 1000").unwrap().squeeze_mib, 600);
        assert_eq!(parse("--memory 1000 --squeeze 10").unwrap().squeeze_mib, 10);
        let o = parse("--report out/r.json").unwrap();
        assert_eq!(o.picture_path(), PathBuf::from("out/r.svg"));
        assert_eq!((o.junit, o.trace, o.progress), (None, None, None));
    }

    #[test]
    fn reproduce_command_parses_back_to_the_same_run() {
        let o = parse(
            "sawtooth --duration 30 --cycles 2 --memory 384 --bos 10 --sizes 64x64,128x32 \
             --blob-share 0.5 --madvise-share 0 --seed 77 --pressure hog,scan --squeeze 100 \
             --zram 128 --fault-delay resource_detach_backing=20 --fault-fail-attaches 1 \
             --fail-attach-every 30 --max-stall 2.5 --qemu /usr/bin/qemu-system-x86_64",
        )
        .unwrap();
        let again = o.reproduce_command();
        let args = again
            .strip_prefix("cargo xtask run -- ")
            .unwrap()
            .split_whitespace();
        let mut back = parse_args(args).unwrap();
        back.report = o.report.clone();
        back.junit = o.junit.clone();
        assert_eq!(back, o);
    }

    #[test]
    fn a_repeated_option_keeps_its_last_value_and_faults_keep_their_order() {
        let o = parse(
            "--seed 3 --seed 4 --progress --no-progress --fault-delay a=1 \
             --fault-fail-attaches 2 --fault-delay b=2 --fault-corrupt-transfers 1",
        )
        .unwrap();
        assert_eq!((o.seed, o.seed_given, o.progress), (4, true, Some(false)));
        assert_eq!(
            o.daemon_faults,
            [
                "--fault-delay",
                "a=1",
                "--fault-fail-attaches",
                "2",
                "--fault-delay",
                "b=2",
                "--fault-corrupt-transfers",
                "1"
            ]
        );
        assert_eq!(
            parse("--no-progress --progress").unwrap().progress,
            Some(true)
        );
        assert!(o.reproduce_command().ends_with(
            " --fault-delay a=1 --fault-fail-attaches 2 --fault-delay b=2 \
             --fault-corrupt-transfers 1"
        ));
    }

    #[test]
    fn a_value_may_start_with_a_dash() {
        // Passed through: the daemon judges its own fault values.
        let o = parse("--fault-corrupt-transfers -1 --report -").unwrap();
        assert_eq!(o.daemon_faults, ["--fault-corrupt-transfers", "-1"]);
        assert_eq!(o.report, PathBuf::from("-"));
        assert!(parse("--seed -1").unwrap_err().contains("invalid digit"));
    }

    #[test]
    fn bad_arguments_are_refused_with_a_reason() {
        for (line, needle) in [
            ("nosuch", "unknown scenario"),
            ("steady sawtooth", "unexpected argument 'sawtooth'"),
            ("--bos", "a value is required for '--bos"),
            ("--bos x", "invalid value 'x' for '--bos"),
            ("--bos 1", "at least 2"),
            ("--cycles 0", "at least 1"),
            ("--cycles 5000000000", "5000000000 is too large"),
            ("--blob-share 2", "share between 0 and 1"),
            ("--sizes 10", "expected WxH"),
            ("--sizes 0x5", "1..4096"),
            ("--pressure fire", "unknown pressure mechanism"),
            ("--pressure ,", "at least one mechanism"),
            ("--memory 100", "at least 128 MiB"),
            ("--memory 256 --squeeze 250", "too little"),
            ("--max-stall 0", "seconds in (0, 3600]"),
            ("--frobnicate", "unexpected argument '--frobnicate'"),
            ("--repeat 0", "at least 1"),
            ("--fail-attach-every 0", "1..=3600"),
        ] {
            let err = parse_args(line.split_whitespace()).unwrap_err();
            // What gpuswap-run prints on stderr before it exits 2.
            assert!(err.use_stderr(), "{line}: {err}");
            assert_eq!(err.exit_code(), 2, "{line}: {err}");
            let err = err.to_string();
            assert!(err.contains(needle), "{line}: {err}");
        }
    }

    #[test]
    fn help_is_no_error_and_names_every_option() {
        for help in ["--help", "-h", "sawtooth --seed 3 --help"] {
            let e = parse_args(help.split_whitespace()).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::DisplayHelp, "{help}");
            // gpuswap-run prints it on stdout and exits 0.
            assert!(!e.use_stderr(), "{help}");
        }
        let text = Cli::command().render_help().to_string();
        for option in [
            "[SCENARIO]",
            "--duration <S>",
            "--cycles <N>",
            "--memory <MiB>",
            "--bos <N>",
            "--sizes <WxH,...>",
            "--blob-share <F>",
            "--madvise-share <F>",
            "--seed <N>",
            "--repeat <N>",
            "--pressure <LIST>",
            "--squeeze <MiB>",
            "--zram <MiB>",
            "--fault-fail-attaches <N>",
            "--fault-corrupt-transfers <N>",
            "--fault-delay <CMD=MS>",
            "--fail-attach-every <S>",
            "--qemu <PATH>",
            "--report <PATH>",
            "--picture <PATH>",
            "--junit <PATH>",
            "--trace <PATH>",
            "--max-stall <S>",
            "--progress",
            "--no-progress",
            "exit status: 0 every check passed",
        ] {
            assert!(text.contains(option), "{option} missing from:\n{text}");
        }
    }
}
