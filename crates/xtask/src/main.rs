//! gpuswap's project commands. `cargo xtask test` is what CI runs;
//! `cargo xtask run` is the main job. Both set the host up first.
//! `cargo xtask bench` runs the benchmarks.

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
        /// Kernel variant: debug (lockdep; what tests use) or release.
        #[arg(long, default_value = "debug")]
        variant: String,
    },
    /// The whole test suite: lints, unit and integration tests, and the
    /// end-to-end tests on a real guest under QEMU.
    Test,
    /// Install the daemon in /usr/local/libexec and its vhost-user JSON
    /// descriptor in /etc/qemu/vhost-user, where libvirt looks.
    Install,
    /// The main job: boot the guest on the daemon, run the guest workload
    /// and print a report (see the README).
    Run {
        /// Arguments passed to the end-to-end runner.
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Benchmarks: the release daemon side by side with QEMU's C
    /// vhost-user-gpu backend and memcpy (see docs/benchmarks.md). Writes
    /// results.json, results.md and attach-detach.svg to docs/bench (a
    /// full run) or target/bench-smoke (--smoke).
    Bench {
        /// The few-second version: every workload at tiny sizes.
        #[arg(long)]
        smoke: bool,
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

/// Runs a command from the repository root, echoing it; fails with its
/// status.
fn run(cmd: &mut Command) -> Result<(), String> {
    let shown = format!("{cmd:?}").replace('"', "");
    eprintln!("\x1b[1m[xtask] {shown}\x1b[0m");
    let status = cmd
        .current_dir(root())
        .status()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{shown} failed: {status}"))
    }
}

/// Runs a command and returns the last line of its stdout (the build
/// scripts print their output path there).
fn output_path(cmd: &mut Command) -> Result<PathBuf, String> {
    let shown = format!("{cmd:?}").replace('"', "");
    eprintln!("\x1b[1m[xtask] {shown}\x1b[0m");
    let out = cmd
        .current_dir(root())
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
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
    let images = images("debug", false)?;
    let mut tests = cargo();
    tests.args(["test", "--workspace"]);
    with_images(&mut tests, &images);
    run(&mut tests)?;
    eprintln!(
        "[xtask] test suite passed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn main_job(args: &[String]) -> Result<(), String> {
    setup()?;
    let images = images("debug", true)?;
    let mut job = cargo();
    job.args([
        "run",
        "--release",
        "-q",
        "-p",
        "gpuswap-tests",
        "--bin",
        "gpuswap-run",
        "--",
    ])
    .args(args);
    with_images(&mut job, &images);
    run(&mut job)
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
    )
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
        Cmd::Run { args } => main_job(&args),
        Cmd::Bench { smoke, out, args } => bench(smoke, out, &args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("[xtask] error: {e}");
            ExitCode::FAILURE
        }
    }
}
