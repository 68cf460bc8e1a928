//! gpuswap's project commands. `cargo xtask test` is what CI runs;
//! `cargo xtask run` is the main job. Both set the host up first.
//! `cargo xtask bench` runs the benchmarks, `cargo xtask fuzz` the fuzz
//! targets of crates/fuzz.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "gpuswap project commands")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install host packages and tools (idempotent).
    Setup,
    /// Build the daemon, the guest kernel and the initramfs (cached).
    Images {
        /// Kernel variant: debug (lockdep; what tests use), kasan (debug
        /// plus KASAN, clang-built) or release.
        #[arg(long, default_value = "debug")]
        variant: String,
    },
    /// The whole test suite: lints, unit and integration tests, and the
    /// end-to-end tests on a real guest under QEMU.
    Test,
    /// Install the daemon in /usr/local/libexec, its vhost-user JSON
    /// descriptor in /etc/qemu/vhost-user, where libvirt looks, and its
    /// configuration in /usr/local/etc/gpuswap (kept if present).
    Install,
    /// The main job: boot the guest on the daemon, run the guest workload
    /// and print a report (see the README).
    Run {
        /// Guest kernel variant: debug, kasan or release.
        #[arg(long, default_value = "debug")]
        kernel: String,
        /// Arguments passed to the end-to-end runner.
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Boot the guest N times on one daemon, a short agent exchange each
    /// time, no retries; print the failures by signature.
    BootLoop {
        /// Guest kernel variant: debug, kasan or release.
        #[arg(long, default_value = "debug")]
        kernel: String,
        /// Boots.
        n: usize,
    },
    /// Coverage-guided fuzzing (cargo-fuzz, libFuzzer, nightly): builds
    /// the targets of crates/fuzz and runs one or each for a while; fails
    /// on a crash, printing where libFuzzer left the input.
    Fuzz {
        /// decode, device, queue or control; every target when omitted.
        target: Option<String>,
        /// How long each target runs.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Start from a fresh copy of the seeds instead of the corpus
        /// earlier runs kept (what `cargo xtask test` does).
        #[arg(long)]
        scratch_corpus: bool,
    },
    /// Benchmarks: the release daemon side by side with QEMU's C
    /// vhost-user-gpu backend and memcpy (see docs/benchmarks.md). Writes
    /// results.json, results.md and attach-detach.svg to docs/bench (a
    /// full run) or target/bench-smoke (--smoke).
    Bench {
        /// The few-second version: every workload at tiny sizes.
        #[arg(long)]
        smoke: bool,
        /// The guest side instead: shrinker eviction and restore against
        /// the kernel's own swap path, in one real guest boot
        /// (gpuswap-guest-bench; --bos N, --rounds R, --memory MiB).
        #[arg(long)]
        guest: bool,
        /// Output directory instead of the default.
        #[arg(long)]
        out: Option<PathBuf>,
        /// More arguments for gpuswap-bench (e.g. --rounds 5, --no-c-backend).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The build cache the image scripts share: `$GPUSWAP_CACHE`, else
/// `$XDG_CACHE_HOME/gpuswap`, else `~/.cache/gpuswap`.
fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("GPUSWAP_CACHE") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    base.join("gpuswap")
}

/// Where the fuzz targets are built: in the shared cache, not the
/// checkout, so a fresh clone reuses the instrumented dependencies (about
/// 8 minutes to build on two cores); cargo's fingerprints keep it right
/// for whatever source is built.
fn fuzz_target_dir() -> PathBuf {
    cache_dir().join("fuzz-target")
}

/// Runs a command from the repository root, echoing it; fails with its
/// status.
fn run(cmd: &mut Command) -> Result<(), String> {
    let shown = format!("{cmd:?}").replace('"', "");
    eprintln!("\x1b[1m[xtask] {shown}\x1b[0m");
    let started = Instant::now();
    let status = cmd
        .current_dir(root())
        .status()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    // Where a CI run's time went, step by step.
    eprintln!(
        "[xtask] {:.0} s: {}",
        started.elapsed().as_secs_f64(),
        step_name(cmd)
    );
    if status.success() {
        Ok(())
    } else {
        Err(format!("{shown} failed: {status}"))
    }
}

/// A short name for a step in the timing lines: the program and its
/// arguments, without the environment.
fn step_name(cmd: &Command) -> String {
    let program = Path::new(cmd.get_program())
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    std::iter::once(program)
        .chain(cmd.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs a command and returns the last line of its stdout (the build
/// scripts print their output path there).
fn output_path(cmd: &mut Command) -> Result<PathBuf, String> {
    let shown = format!("{cmd:?}").replace('"', "");
    eprintln!("\x1b[1m[xtask] {shown}\x1b[0m");
    let started = Instant::now();
    let out = cmd
        .current_dir(root())
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    eprintln!(
        "[xtask] {:.0} s: {}",
        started.elapsed().as_secs_f64(),
        step_name(cmd)
    );
    if !out.status.success() {
        return Err(format!("{shown} failed: {}", out.status));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .map(|l| PathBuf::from(l.trim()))
        .ok_or_else(|| format!("{shown} printed no path"))
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn setup() -> Result<(), String> {
    run(Command::new("bash").arg("images/setup-host.sh"))
}

/// Paths of everything a guest run needs, exported to the tests.
struct Images {
    daemon: PathBuf,
    kernel_out: PathBuf,
    initrd: PathBuf,
    /// QEMU with qemu-scripts' blob patch (qemu-scripts/build-qemu.sh).
    qemu: PathBuf,
}

/// Builds the daemon (release or the test profile), the static guest tool,
/// the kernel, the initramfs and the blob-capable QEMU.
fn images(variant: &str, release: bool) -> Result<Images, String> {
    let profile = if release { "release" } else { "debug" };
    run(cargo().args([
        "build",
        "--profile",
        if release { "release" } else { "dev" },
        "-p",
        "gpuswap-daemon",
    ]))?;
    // Static, so it runs in a busybox initramfs; its own target dir keeps
    // the RUSTFLAGS change from rebuilding the host artifacts.
    run(cargo()
        .args([
            "build",
            "--release",
            "-p",
            "gpuswap-guest",
            "--target",
            "x86_64-unknown-linux-gnu",
            "--target-dir",
            "target/guest",
        ])
        .env("RUSTFLAGS", "-C target-feature=+crt-static"))?;
    let guest_tool = root().join("target/guest/x86_64-unknown-linux-gnu/release/gpuswap-guest");
    let kernel_out = output_path(
        Command::new("bash")
            .arg("images/build-kernel.sh")
            .args(["--variant", variant]),
    )?;
    let initrd = output_path(
        Command::new("bash")
            .arg("images/build-initramfs.sh")
            .arg("--kernel-out")
            .arg(&kernel_out)
            .arg("--guest-tool")
            .arg(&guest_tool),
    )?;
    // Stock QEMU 10.0 hides RESOURCE_BLOB from the guest on vhost-user-gpu.
    let qemu = output_path(Command::new("bash").arg("qemu-scripts/build-qemu.sh"))?;
    Ok(Images {
        daemon: root().join("target").join(profile).join("gpuswap-daemon"),
        kernel_out,
        initrd,
        qemu,
    })
}

fn with_images(cmd: &mut Command, images: &Images) {
    cmd.env("GPUSWAP_DAEMON", &images.daemon)
        .env("GPUSWAP_KERNEL", images.kernel_out.join("bzImage"))
        .env("GPUSWAP_INITRD", &images.initrd)
        .env("GPUSWAP_QEMU", &images.qemu);
}

fn test() -> Result<(), String> {
    let started = Instant::now();
    setup()?;
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    let debug = images("debug", false)?;
    let mut tests = cargo();
    tests.args(["test", "--workspace"]);
    with_images(&mut tests, &debug);
    run(&mut tests)?;
    // The guest kernel's paths again under KASAN: eviction, blobs and the
    // stress runs that must pass (the negative ones test the harness,
    // which the kernel does not change). Any KASAN report fails a test.
    let kasan = images("kasan", false)?;
    let mut tests = cargo();
    tests.args(["test", "-p", "gpuswap-tests"]);
    for t in KASAN_TESTS {
        tests.args(["--test", t]);
    }
    tests.arg("--");
    for skip in KASAN_SKIP {
        tests.args(["--skip", skip]);
    }
    with_images(&mut tests, &kasan);
    run(&mut tests)?;
    // Every fuzz target briefly, from a scratch copy of the seeds: catches
    // a target that no longer builds or crashes on its own corpus, and
    // leaves the repository's corpus as it is.
    fuzz(FUZZ_TARGETS, CI_FUZZ_SECONDS, FuzzCorpus::Scratch)?;
    eprintln!(
        "[xtask] test suite passed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The real-guest test files that run on the KASAN kernel too, and the
/// tests of them that do not: the first two check the harness, not the
/// kernel; the slow-host stress run checks wall-clock bounds of a scenario
/// timed for a guest at the debug kernel's speed (each workload request
/// within 5 s, evictions within 40 s of a host that takes 1.5 s per
/// DETACH), which a KASAN guest, slower at everything reclaim does, misses
/// by its speed alone (a request spanning two DETACHes took 7.7 s there
/// when they took 3 s each).
/// The slow-DETACH path still runs on KASAN in the stall test
/// (`evict.rs`, its delay and bound scaled together).
const KASAN_TESTS: &[&str] = &["evict", "blob", "stress"];
const KASAN_SKIP: &[&str] = &[
    "a_corrupted_transfer_is_detected_and_named",
    "a_workload_request_longer_than_the_bound_fails_the_check",
    "a_slow_host_does_not_freeze_the_guest",
];

/// The targets of crates/fuzz (`fuzz_targets/NAME.rs`).
const FUZZ_TARGETS: &[&str] = &["decode", "device", "queue", "control"];
/// Seconds per target in `cargo xtask test`.
const CI_FUZZ_SECONDS: u64 = 20;
const FUZZ_DIR: &str = "crates/fuzz";
/// libFuzzer's limits for every run: a unit that takes longer than the
/// timeout is a hang, one that allocates past the limits is unbounded
/// allocation; both are failures like a crash.
const FUZZ_LIMITS: &[&str] = &["-timeout=10", "-rss_limit_mb=2048", "-malloc_limit_mb=1024"];

/// Where a fuzz run keeps what it finds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FuzzCorpus {
    /// crates/fuzz/target/corpus/TARGET, kept across runs (so repeated
    /// runs go on where the last stopped).
    Kept,
    /// A fresh copy for this run only (the test suite).
    Scratch,
}

/// A cargo for the nightly toolchain. `cargo` from PATH is rustup's proxy,
/// which understands `+nightly`; $CARGO (the stable cargo running xtask)
/// does not.
fn nightly_cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.arg("+nightly").env_remove("RUSTUP_TOOLCHAIN");
    cmd
}

/// Installs cargo-fuzz unless `cargo fuzz` already runs.
fn ensure_cargo_fuzz() -> Result<(), String> {
    let present = nightly_cargo()
        .args(["fuzz", "--version"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        return Ok(());
    }
    run(nightly_cargo().args(["install", "--locked", "--quiet", "cargo-fuzz"]))
}

/// What libFuzzer's final stats and last status line say about a run.
#[derive(Default)]
struct FuzzStats {
    execs: Option<u64>,
    execs_per_sec: Option<u64>,
    /// From the last status line: `cov: N ft: N corp: N/SIZE`.
    cov: Option<u64>,
    ft: Option<u64>,
    corpus: Option<u64>,
    peak_rss_mb: Option<u64>,
    /// `Test unit written to PATH` (a crash, hang or leak).
    artifact: Option<String>,
}

impl FuzzStats {
    fn parse(log: &str) -> Self {
        let mut stats = FuzzStats::default();
        let number = |s: &str| s.trim().split('/').next().and_then(|n| n.parse().ok());
        for line in log.lines() {
            if let Some((key, value)) = line.strip_prefix("stat::").and_then(|l| l.split_once(':'))
            {
                match key {
                    "number_of_executed_units" => stats.execs = number(value),
                    "average_exec_per_sec" => stats.execs_per_sec = number(value),
                    "peak_rss_mb" => stats.peak_rss_mb = number(value),
                    _ => {}
                }
            }
            if let Some(path) = line.split("Test unit written to ").nth(1) {
                stats.artifact = Some(path.trim().to_string());
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            for pair in words.windows(2) {
                match pair[0] {
                    "cov:" => stats.cov = number(pair[1]),
                    "ft:" => stats.ft = number(pair[1]),
                    "corp:" => stats.corpus = number(pair[1]),
                    _ => {}
                }
            }
        }
        stats
    }

    fn summary(&self) -> String {
        let show = |v: Option<u64>| v.map_or("?".to_string(), |v| v.to_string());
        format!(
            "{} execs ({}/s), cov {}, ft {}, corpus {} units, peak RSS {} MB",
            show(self.execs),
            show(self.execs_per_sec),
            show(self.cov),
            show(self.ft),
            show(self.corpus),
            show(self.peak_rss_mb)
        )
    }
}

/// Copies the files of `from` into `to` (created).
fn copy_dir(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::create_dir_all(to).map_err(|e| format!("{}: {e}", to.display()))?;
    let entries = std::fs::read_dir(from).map_err(|e| format!("{}: {e}", from.display()))?;
    for entry in entries {
        let path = entry
            .map_err(|e| format!("{}: {e}", from.display()))?
            .path();
        if let Some(name) = path.file_name().filter(|_| path.is_file()) {
            std::fs::copy(&path, to.join(name)).map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    Ok(())
}

/// Builds the fuzz targets and runs each of `targets` for `seconds`,
/// starting from the seeds in crates/fuzz/corpus/TARGET (never written:
/// new inputs go to the run's own corpus). Fails on the first target that
/// crashes, hangs or runs out of memory; its log and the input libFuzzer
/// saved are named in the error.
fn fuzz(targets: &[&str], seconds: u64, corpus: FuzzCorpus) -> Result<(), String> {
    ensure_cargo_fuzz()?;
    let fuzz_dir = root().join(FUZZ_DIR);
    let build_one = targets.len() == 1;
    let mut build = nightly_cargo();
    build
        .args(["fuzz", "build", "--fuzz-dir", FUZZ_DIR, "--target-dir"])
        .arg(fuzz_target_dir());
    if build_one {
        build.arg(targets[0]);
    }
    run(&mut build)?;
    for &target in targets {
        let seeds = fuzz_dir.join("corpus").join(target);
        let work = match corpus {
            FuzzCorpus::Kept => fuzz_dir.join("target/corpus").join(target),
            FuzzCorpus::Scratch => fuzz_dir.join("target/scratch-corpus").join(target),
        };
        if corpus == FuzzCorpus::Scratch {
            let _ = std::fs::remove_dir_all(&work);
            copy_dir(&seeds, &work)?;
        }
        std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
        let log_path = fuzz_dir.join("target/logs").join(format!("{target}.log"));
        if let Some(dir) = log_path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let log =
            std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
        let mut cmd = nightly_cargo();
        cmd.args(["fuzz", "run", "--fuzz-dir", FUZZ_DIR, "--target-dir"])
            .arg(fuzz_target_dir())
            .arg(target)
            .arg(&work)
            .arg(&seeds)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg("-print_final_stats=1")
            .args(FUZZ_LIMITS)
            .current_dir(root())
            .stdout(
                log.try_clone()
                    .map_err(|e| format!("{}: {e}", log_path.display()))?,
            )
            .stderr(log);
        eprintln!(
            "\x1b[1m[xtask] fuzz {target} for {seconds} s (log: {})\x1b[0m",
            log_path.display()
        );
        let status = cmd
            .status()
            .map_err(|e| format!("cannot run cargo fuzz: {e}"))?;
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let stats = FuzzStats::parse(&text);
        eprintln!("[xtask] fuzz {target}: {}", stats.summary());
        if !status.success() {
            // From where libFuzzer or Rust says what went wrong (the end of
            // the log is cargo-fuzz's own backtrace), else the last lines.
            let lines: Vec<&str> = text.lines().collect();
            let start = lines
                .iter()
                .position(|l| {
                    [
                        "panicked at",
                        "==ERROR",
                        "ALARM:",
                        "out-of-memory",
                        "deadly signal",
                    ]
                    .iter()
                    .any(|m| l.contains(m))
                })
                .unwrap_or(lines.len().saturating_sub(40));
            for line in lines.iter().skip(start).take(40) {
                eprintln!("    {line}");
            }
            let artifact = stats
                .artifact
                .unwrap_or_else(|| "(none written; see the log)".into());
            return Err(format!(
                "fuzz target {target} failed ({status}); input: {artifact}; log: {}",
                log_path.display()
            ));
        }
    }
    Ok(())
}

/// Runs the boot loop; its exit status is the loop's (0: every boot ok).
fn boot_loop(kernel: &str, n: usize) -> Result<u8, String> {
    harness("gpuswap-boot-loop", kernel, &[n.to_string()])
}

/// Runs the main job; its exit status is gpuswap-run's (0 passed, 1 a
/// check failed, 2 usage error, 3 could not run).
fn main_job(kernel: &str, args: &[String]) -> Result<u8, String> {
    harness("gpuswap-run", kernel, args)
}

/// Sets up, builds the images and runs harness binary `bin` of package
/// gpuswap-harness on them; returns its exit status.
fn harness(bin: &str, kernel: &str, args: &[String]) -> Result<u8, String> {
    setup()?;
    let images = images(kernel, true)?;
    let mut job = cargo();
    job.args([
        "run",
        "--release",
        "-q",
        "-p",
        "gpuswap-harness",
        "--bin",
        bin,
        "--",
    ])
    .args(args);
    with_images(&mut job, &images);
    let status = job
        .current_dir(root())
        .status()
        .map_err(|e| format!("cannot run {bin}: {e}"))?;
    // Killed by a signal: it did not finish, so it could not run.
    Ok(status.code().map_or(3, |c| c.clamp(0, 255) as u8))
}

/// QEMU's C backend, measured next to gpuswap.
const C_BACKEND: &str = "/usr/lib/qemu/vhost-user-gpu";

fn bench(smoke: bool, out: Option<PathBuf>, args: &[String]) -> Result<(), String> {
    // A fresh machine lacks QEMU's C backend: the host setup installs it.
    if !Path::new(C_BACKEND).exists() {
        setup()?;
    }
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "gpuswap-daemon",
        "-p",
        "gpuswap-bench",
    ]))?;
    let out = out.unwrap_or_else(|| {
        root().join(if smoke {
            "target/bench-smoke"
        } else {
            "docs/bench"
        })
    });
    let mut cmd = Command::new(root().join("target/release/gpuswap-bench"));
    cmd.arg("--daemon")
        .arg(root().join("target/release/gpuswap-daemon"))
        .arg("--c-backend")
        .arg(C_BACKEND)
        .arg("--out")
        .arg(&out);
    if smoke {
        cmd.arg("--smoke");
    }
    run(cmd.args(args))
}

fn install() -> Result<(), String> {
    run(cargo().args(["build", "--release", "-p", "gpuswap-daemon"]))?;
    let copy = |from: PathBuf, to: &str| {
        if let Some(dir) = Path::new(to).parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        std::fs::copy(&from, to).map_err(|e| format!("{} -> {to}: {e}", from.display()))?;
        eprintln!("[xtask] installed {to}");
        Ok::<(), String>(())
    };
    copy(
        root().join("target/release/gpuswap-daemon"),
        "/usr/local/libexec/gpuswap-daemon",
    )?;
    copy(
        root().join("crates/daemon/50-gpuswap-gpu.json"),
        "/etc/qemu/vhost-user/50-gpuswap-gpu.json",
    )?;
    // The configuration is the user's once installed: never overwritten.
    const CONFIG: &str = "/usr/local/etc/gpuswap/daemon.conf";
    if Path::new(CONFIG).exists() {
        eprintln!("[xtask] kept {CONFIG}");
        Ok(())
    } else {
        copy(root().join("crates/daemon/daemon.conf"), CONFIG)
    }
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Cmd::Setup => setup(),
        Cmd::Images { variant } => images(&variant, true).map(|i| {
            println!("daemon: {}", i.daemon.display());
            println!("kernel: {}", i.kernel_out.join("bzImage").display());
            println!("initrd: {}", i.initrd.display());
            println!("qemu: {}", i.qemu.display());
        }),
        Cmd::Test => test(),
        Cmd::Install => install(),
        Cmd::Run { kernel, args } => {
            return match main_job(&kernel, &args) {
                Ok(code) => ExitCode::from(code),
                Err(e) => {
                    // Set-up or images failed: nothing was checked.
                    eprintln!("[xtask] error: {e}");
                    ExitCode::from(3)
                }
            };
        }
        Cmd::Fuzz {
            target,
            seconds,
            scratch_corpus,
        } => {
            let corpus = if scratch_corpus {
                FuzzCorpus::Scratch
            } else {
                FuzzCorpus::Kept
            };
            match target {
                Some(t) if FUZZ_TARGETS.contains(&t.as_str()) => {
                    fuzz(&[t.as_str()], seconds, corpus)
                }
                Some(t) => Err(format!(
                    "no fuzz target {t:?}; there are {}",
                    FUZZ_TARGETS.join(", ")
                )),
                None => fuzz(FUZZ_TARGETS, seconds, corpus),
            }
        }
        Cmd::Bench {
            guest: true,
            out,
            args,
            ..
        } => {
            let mut args = args;
            if let Some(out) = out {
                args.extend(["--out".to_string(), out.display().to_string()]);
            }
            return match harness("gpuswap-guest-bench", "debug", &args) {
                Ok(code) => ExitCode::from(code),
                Err(e) => {
                    eprintln!("[xtask] error: {e}");
                    ExitCode::from(3)
                }
            };
        }
        Cmd::Bench {
            smoke, out, args, ..
        } => bench(smoke, out, &args),
        Cmd::BootLoop { kernel, n } => {
            return match boot_loop(&kernel, n) {
                Ok(code) => ExitCode::from(code),
                Err(e) => {
                    eprintln!("[xtask] error: {e}");
                    ExitCode::from(3)
                }
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("[xtask] error: {e}");
            ExitCode::FAILURE
        }
    }
}
