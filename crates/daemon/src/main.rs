//! gpuswap-daemon: a vhost-user virtio-gpu backend that QEMU's
//! `vhost-user-gpu-pci` and crosvm attach to.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use gpuswap_device::{DeviceConfig, Faults};
use gpuswap_protocol::ctrl_type;
use log::{error, info, warn};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::socket::{getsockname, getsockopt, sockopt, AddressFamily, SockType};
use nix::sys::socket::{SockaddrLike, SockaddrStorage};
use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use gpuswap_daemon::backend::{CompletionDelays, VhostUserGpuBackend};
use gpuswap_daemon::{config, control, relay, seccomp};

/// Large blocks (a 2D resource's host copy) page-aligned, so that a
/// transfer's row copies from guest pages do not 4K-alias.
#[global_allocator]
static ALLOCATOR: gpuswap_daemon::alloc::PageAlignedLarge = gpuswap_daemon::alloc::PageAlignedLarge;

/// The longest `--poll-us`: beyond a millisecond a poll costs more CPU
/// than any wakeup it saves.
const MAX_POLL_US: u64 = 1000;

/// A vhost-user virtio-gpu backend with exact ATTACH/DETACH_BACKING, so a
/// guest can evict GPU buffers under memory pressure and restore them.
///
/// Options can also come from a configuration file (see --config), one per
/// line as `name = value`; the command line wins.
#[derive(Debug, Parser)]
#[command(version, about, args_override_self = true)]
struct Args {
    /// Listen for the frontend on this unix socket path.
    #[arg(long, conflicts_with = "fd", required_unless_present_any = ["fd", "print_capabilities"])]
    socket_path: Option<PathBuf>,

    /// Serve the frontend on this inherited unix socket: a connected one
    /// (libvirt, and QEMU's own backend convention: serve it, exit when it
    /// closes) or a listening one (accept frontends on it).
    #[arg(long)]
    fd: Option<RawFd>,

    /// Read options from this file [default: etc/gpuswap/daemon.conf of the
    /// installation prefix, e.g. /usr/local/etc for /usr/local/libexec, if
    /// it exists].
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,

    /// Print the backend capabilities as JSON and exit.
    #[arg(long)]
    print_capabilities: bool,

    /// Serve the JSON-lines control socket at this path; `{pid}` is
    /// replaced by the daemon's process id. A missing parent directory is
    /// created.
    #[arg(long)]
    control_socket: Option<PathBuf>,

    /// Append the log here instead of stderr (libvirt discards a backend's
    /// stderr); `{pid}` is replaced by the daemon's process id. RUST_LOG
    /// sets the level (default info).
    #[arg(long, value_name = "PATH")]
    log_file: Option<PathBuf>,

    /// Host memory for resources (host copies and bookkeeping); accepts
    /// K, M and G suffixes.
    #[arg(long, default_value = "2G", value_parser = parse_size)]
    max_host_memory: u64,

    /// Entries accepted in one ATTACH_BACKING or CREATE_BLOB.
    #[arg(long, default_value_t = DeviceConfig::default().max_entries)]
    max_entries: u32,

    /// Scanout size reported when the frontend has no display socket,
    /// as WIDTHxHEIGHT; repeat for more scanouts.
    #[arg(long = "scanout", default_value = "1280x800", value_parser = parse_mode)]
    scanouts: Vec<(u32, u32)>,

    /// After handling a queue, watch it this many microseconds for the
    /// next request before sleeping until a kick (adaptive: the window
    /// grows while requests come that quickly and shrinks to nothing while
    /// they do not, and polling is on only while it measurably gets more
    /// requests handled than sleeping does); 0, the default, never polls:
    /// on the 2-vCPU machines measured, polling never paid and at times
    /// made a closed loop of requests about 3x slower (docs/benchmarks.md).
    #[arg(long, value_name = "US", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=MAX_POLL_US))]
    poll_us: u64,

    /// Poll within the window whether or not it pays (for hosts where it
    /// is known to, and for tests of the polling path).
    #[arg(long)]
    poll_always: bool,

    /// Exit after the first frontend disconnects instead of waiting for the
    /// next one (always so on a connected --fd).
    #[arg(long)]
    once: bool,

    /// Let control-socket clients change fault injection (the `fault`
    /// request). Implied by any --fault-* option.
    #[arg(long, help_heading = "Fault injection")]
    allow_fault_injection: bool,

    /// Fail the next N ATTACH_BACKINGs with ERR_OUT_OF_MEMORY (armed from
    /// the start, like the control socket's `fault` request).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        allow_negative_numbers = true,
        help_heading = "Fault injection"
    )]
    fault_fail_attaches: u32,

    /// Corrupt the host copy after the next N TRANSFER_TO_HOST_2Ds that
    /// succeed: the transferred rect's first byte is XORed with 0xff after
    /// the copy (a `fault` event `corrupt_transfer` in the trace).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        allow_negative_numbers = true,
        help_heading = "Fault injection"
    )]
    fault_corrupt_transfers: u32,

    /// Complete every request of type COMMAND (a control-socket
    /// `delay_command` name, e.g. resource_detach_backing) MS milliseconds
    /// late; 0 means no delay. Repeat for more request types; the last one
    /// given for a type wins.
    #[arg(
        long = "fault-delay",
        value_name = "COMMAND=MS",
        value_parser = parse_delay,
        help_heading = "Fault injection"
    )]
    fault_delays: Vec<(u32, u64)>,

    /// The seccomp sandbox: `kill` ends the daemon on a syscall outside
    /// its allow-list, `log` only has the kernel log it, `off` installs no
    /// filter.
    #[arg(long, value_enum, default_value_t = seccomp::Mode::Kill)]
    seccomp: seccomp::Mode,
}

impl Args {
    /// The device faults armed from the command line.
    fn faults(&self) -> Faults {
        Faults {
            fail_attaches: self.fault_fail_attaches,
            corrupt_transfers: self.fault_corrupt_transfers,
        }
    }

    /// The completion delays armed from the command line (the last one
    /// given for a request type wins; 0 means none).
    fn delays(&self) -> CompletionDelays {
        let mut delays = CompletionDelays::new();
        for &(code, ms) in &self.fault_delays {
            match ms {
                0 => delays.remove(&code),
                ms => delays.insert(code, ms),
            };
        }
        delays
    }
}

fn parse_size(s: &str) -> Result<u64, String> {
    let (digits, shift) = match s.trim().to_ascii_uppercase().chars().last() {
        Some('K') => (&s[..s.len() - 1], 10),
        Some('M') => (&s[..s.len() - 1], 20),
        Some('G') => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    digits
        .trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("{s:?} is not a size like 512M or 2G"))
}

/// `COMMAND=MS`: a request type name as the control socket's
/// `delay_command` takes it, and a delay in milliseconds.
fn parse_delay(s: &str) -> Result<(u32, u64), String> {
    let (name, ms) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not COMMAND=MS, like resource_detach_backing=50"))?;
    let code = ctrl_type::from_name(name.trim()).ok_or_else(|| {
        format!(
            "{name:?} is not a request type name (e.g. resource_detach_backing, \
             transfer_to_host_2d, resource_attach_backing)"
        )
    })?;
    let ms = ms
        .trim()
        .parse::<u64>()
        .map_err(|_| format!("{ms:?} is not a delay in milliseconds"))?;
    if ms > control::MAX_DELAY_MS {
        return Err(format!(
            "a delay of {ms} ms is more than {} ms",
            control::MAX_DELAY_MS
        ));
    }
    Ok((code, ms))
}

fn parse_mode(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("{s:?} is not a mode like 1280x800");
    let (w, h) = s.split_once('x').ok_or_else(bad)?;
    let (w, h) = (w.parse().map_err(|_| bad())?, h.parse().map_err(|_| bad())?);
    if w == 0 || h == 0 || w > 16384 || h > 16384 {
        return Err(bad());
    }
    Ok((w, h))
}

/// Keeps large, short-lived buffers in the heap instead of fresh mmaps.
///
/// An ATTACH of a big backing allocates a few buffers of several MiB
/// (entries, extents, iovecs) that live until its DETACH. Above glibc's
/// default thresholds each is a fresh mmap, unmapped again on free, so every
/// attach/detach cycle page-faults its buffers back in (measured: 5088
/// faults per 1 GiB cycle). Holding up to `TRIM` of freed heap keeps them
/// warm; memory past that still goes back to the kernel.
fn tune_allocator() {
    const MMAP_THRESHOLD: libc::c_int = 64 << 20;
    const TRIM: libc::c_int = 256 << 20;
    // SAFETY: mallopt only changes allocator parameters; it is called
    // before any other thread exists.
    let ok = unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM) == 1
    };
    if !ok {
        warn!("mallopt refused the allocator thresholds; attach/detach will be slower");
    }
}

/// The command line with the configuration file's options in front.
fn parse_args() -> Args {
    let cli: Vec<OsString> = std::env::args_os().collect();
    let path =
        config::path_from_args(&cli).or_else(|| config::default_path().filter(|p| p.exists()));
    let Some(path) = path else {
        return Args::parse_from(cli);
    };
    let from_file = match config::load(&path) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("gpuswap-daemon: configuration {e}");
            std::process::exit(2);
        }
    };
    let mut argv = cli;
    let rest = argv.split_off(1.min(argv.len()));
    argv.extend(from_file);
    argv.extend(rest);
    match Args::try_parse_from(argv) {
        Ok(args) => args,
        Err(e) => {
            // An error, not --help or --version: say where options came from.
            if e.use_stderr() {
                eprintln!("(with the options from {})", path.display());
            }
            e.exit()
        }
    }
}

fn main() {
    tune_allocator();
    let args = parse_args();
    let mut logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    logger.format_timestamp_micros();
    if let Some(path) = &args.log_file {
        let path = config::expand_pid(path);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(dir);
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path);
        match file {
            Ok(file) => {
                logger.target(env_logger::Target::Pipe(Box::new(file)));
            }
            Err(e) => {
                eprintln!(
                    "gpuswap-daemon: cannot open the log file {}: {e}",
                    path.display()
                );
                std::process::exit(1);
            }
        }
    }
    logger.init();
    if args.print_capabilities {
        // vhost-user.rst: a GPU backend lists "virgl" / "render-node" when
        // it has them; this one has neither.
        println!("{{\n  \"type\": \"gpu\",\n  \"features\": []\n}}");
        return;
    }
    if let Err(e) = run(args) {
        error!("{e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), String> {
    let config = DeviceConfig {
        max_host_memory: args.max_host_memory,
        max_entries: args.max_entries,
        scanouts: args.scanouts.clone(),
        ..DeviceConfig::default()
    };
    let backend = Arc::new(
        VhostUserGpuBackend::new(config).map_err(|e| format!("cannot create the device: {e}"))?,
    );
    backend.set_poll_max(Duration::from_micros(args.poll_us), args.poll_always);
    let (faults, delays) = (args.faults(), args.delays());
    let armed = faults.fail_attaches > 0 || faults.corrupt_transfers > 0 || !delays.is_empty();
    if armed {
        let shown: Vec<String> = delays
            .iter()
            .map(|(code, ms)| format!("{}={ms}", ctrl_type::name(*code)))
            .collect();
        warn!(
            "faults armed: fail_attaches {}, corrupt_transfers {}, delays [{}]",
            faults.fail_attaches,
            faults.corrupt_transfers,
            shown.join(", ")
        );
    }
    *backend.device().faults_mut() = faults;
    *backend.delays() = delays;

    let control_socket = args.control_socket.as_deref().map(config::expand_pid);
    // Taken before anything else can open descriptors over the inherited
    // one's number.
    let frontends = Frontends::from_args(&args)?;
    let cleanup: Vec<PathBuf> = args
        .socket_path
        .iter()
        .chain(control_socket.iter())
        .cloned()
        .collect();
    handle_termination(cleanup)?;

    if let Some(path) = &control_socket {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let handle = backend
            .control_handle()
            .with_fault_injection(args.allow_fault_injection || armed);
        control::serve(path, handle)
            .map_err(|e| format!("cannot serve {}: {e}", path.display()))?;
    }

    // Everything that needs a syscall only once is done (arguments, log
    // file, sockets bound, inherited descriptor checked, allocator tuned,
    // signal and control threads started): serve frontends sandboxed.
    seccomp::install(args.seccomp).map_err(|e| e.to_string())?;

    match frontends {
        Frontends::Listening(mut listener) => loop {
            info!("waiting for a frontend");
            serve_frontend(&backend, |daemon| {
                daemon.start(&mut listener).map_err(StartError::Daemon)
            })?;
            if args.once {
                break;
            }
        },
        Frontends::Connected(stream) => {
            serve_frontend(&backend, |daemon| {
                let private = relay::PrivateSocket::new().map_err(StartError::Relay)?;
                let path = private.path().to_string_lossy().into_owned();
                daemon.start_client(&path).map_err(StartError::Daemon)?;
                let own = private.accept_own().map_err(StartError::Relay)?;
                relay::spawn(stream, own).map_err(StartError::Relay)?;
                Ok(())
            })?;
            info!("the inherited connection is closed and nothing can reconnect: exiting");
        }
    }
    // As on a signal, leave no dead socket behind (the listener unlinks the
    // vhost-user one when dropped).
    if let Some(path) = &control_socket {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// Where frontends come from.
enum Frontends {
    /// A listening socket: one frontend after another.
    Listening(Listener),
    /// One connection made by whoever started the daemon.
    Connected(UnixStream),
}

impl Frontends {
    fn from_args(args: &Args) -> Result<Self, String> {
        match (&args.socket_path, args.fd) {
            (Some(path), _) => Listener::new(path, true)
                .map(Frontends::Listening)
                .map_err(|e| format!("cannot listen on {}: {e}", path.display())),
            (None, Some(fd)) => Self::inherited(fd).map_err(|e| format!("--fd {fd}: {e}")),
            (None, None) => Err("need --socket-path or --fd".into()),
        }
    }

    /// Takes ownership of an inherited unix stream socket and tells a
    /// listening one from a connected one.
    fn inherited(fd: RawFd) -> Result<Self, String> {
        // SAFETY: F_GETFD reads a descriptor's flags and touches no memory;
        // it only tells whether `fd` is open.
        if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err("not an open file descriptor".into());
        }
        // SAFETY: `fd` is open, and by the vhost-user backend program
        // conventions the caller hands it to us: nothing else in this
        // process uses it, so it can have one owner from here on.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let kind = getsockopt(&fd, sockopt::SockType).map_err(|e| match e {
            nix::errno::Errno::ENOTSOCK => "not a socket".to_string(),
            e => e.to_string(),
        })?;
        let family = getsockname::<SockaddrStorage>(fd.as_raw_fd())
            .map_err(|e| e.to_string())?
            .family();
        if kind != SockType::Stream || family != Some(AddressFamily::Unix) {
            return Err("not a unix stream socket".into());
        }
        if getsockopt(&fd, sockopt::AcceptConn).map_err(|e| e.to_string())? {
            // SAFETY: `fd` is ours (above) and is passed on whole.
            let listener = unsafe { Listener::from_raw_fd(fd.into_raw_fd()) };
            info!("accepting frontends on the inherited listening socket");
            Ok(Frontends::Listening(listener))
        } else {
            info!("serving the frontend on the inherited connected socket");
            Ok(Frontends::Connected(UnixStream::from(fd)))
        }
    }
}

/// Why a frontend connection could not start.
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error("{0}")]
    Daemon(vhost_user_backend::Error),
    #[error("cannot relay the inherited connection: {0}")]
    Relay(std::io::Error),
}

/// Serves one frontend connection from `start` to its end, then frees
/// everything the frontend had.
fn serve_frontend(
    backend: &Arc<VhostUserGpuBackend>,
    start: impl FnOnce(&mut VhostUserDaemon<Arc<VhostUserGpuBackend>>) -> Result<(), StartError>,
) -> Result<(), String> {
    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    let mut daemon = VhostUserDaemon::new("gpuswap".into(), backend.clone(), mem)
        .map_err(|e| format!("cannot create the vhost-user daemon: {e}"))?;
    start(&mut daemon).map_err(|e| format!("cannot start serving a frontend: {e}"))?;
    backend.set_connection(daemon.shutdown_handle());
    info!("frontend connected");
    let result = daemon.wait();
    for handler in daemon.get_epoll_handlers() {
        handler.send_exit_event();
    }
    drop(daemon);
    match result {
        Ok(())
        | Err(vhost_user_backend::Error::HandleRequest(vhost::vhost_user::Error::Disconnected)) => {
            info!("frontend disconnected")
        }
        Err(e) => warn!("frontend connection ended: {e}"),
    }
    backend.disconnected();
    Ok(())
}

/// Exits cleanly on SIGTERM, SIGINT or SIGHUP: sockets are removed and the
/// process exits 0. Resources live in this process, so exiting frees them.
fn handle_termination(paths: Vec<PathBuf>) -> Result<(), String> {
    let mut signals = SigSet::empty();
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        signals.add(signal);
    }
    // Blocked here, before any other thread starts, so every thread
    // inherits the mask and only the waiter below receives them.
    signals
        .thread_block()
        .map_err(|e| format!("cannot block signals: {e}"))?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Ok(signal) = signals.wait() {
                info!("{signal}: exiting");
            }
            for path in &paths {
                let _ = std::fs::remove_file(path);
            }
            std::process::exit(0);
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file `cargo xtask install` installs is one the daemon takes.
    #[test]
    fn shipped_configuration_parses() {
        let args = config::parse(include_str!("../daemon.conf")).unwrap();
        let mut argv = vec![OsString::from("gpuswap-daemon"), OsString::from("--fd=3")];
        argv.extend(args);
        let parsed = Args::try_parse_from(argv).unwrap();
        assert_eq!(
            parsed.control_socket,
            Some(PathBuf::from("/run/gpuswap/{pid}.sock"))
        );
    }

    #[test]
    fn sizes_and_modes_parse() {
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("512m"), Ok(512 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999999G").is_err());
        assert_eq!(parse_mode("1920x1080"), Ok((1920, 1080)));
        assert!(parse_mode("0x10").is_err());
        assert!(parse_mode("wide").is_err());
    }

    #[test]
    fn fault_options_parse_into_faults() {
        assert_eq!(
            parse_delay("resource_detach_backing=50"),
            Ok((ctrl_type::RESOURCE_DETACH_BACKING, 50))
        );
        assert_eq!(
            parse_delay("transfer_to_host_2d=0"),
            Ok((ctrl_type::TRANSFER_TO_HOST_2D, 0))
        );
        for bad in [
            "",
            "resource_detach_backing",
            "resource_detach_backing=",
            "resource_detach_backing=-5",
            "resource_detach_backing=soon",
            "warp_drive=5",
            "=5",
        ] {
            let e = parse_delay(bad).expect_err(bad);
            assert!(!e.is_empty());
        }

        let args = Args::try_parse_from([
            "gpuswap-daemon",
            "--socket-path",
            "/tmp/x",
            "--fault-fail-attaches",
            "2",
            "--fault-corrupt-transfers",
            "3",
            "--fault-delay",
            "resource_detach_backing=50",
            "--fault-delay",
            "resource_flush=5",
            "--fault-delay",
            "resource_flush=0",
            "--fault-delay",
            "transfer_to_host_2d=7",
        ])
        .unwrap();
        let f = args.faults();
        assert_eq!((f.fail_attaches, f.corrupt_transfers), (2, 3));
        assert_eq!(
            args.delays().into_iter().collect::<Vec<_>>(),
            vec![
                (ctrl_type::TRANSFER_TO_HOST_2D, 7),
                (ctrl_type::RESOURCE_DETACH_BACKING, 50)
            ]
        );
        let none = Args::try_parse_from(["gpuswap-daemon", "--socket-path", "/tmp/x"]).unwrap();
        let f = none.faults();
        assert_eq!((f.fail_attaches, f.corrupt_transfers), (0, 0));
        assert!(none.delays().is_empty());
        for bad in [
            &["--fault-fail-attaches", "-1"][..],
            &["--fault-corrupt-transfers", "many"],
            &["--fault-corrupt-transfers", "4294967296"],
            &["--fault-delay", "warp_drive=5"],
        ] {
            let argv = ["gpuswap-daemon", "--socket-path", "/tmp/x"]
                .iter()
                .chain(bad.iter());
            assert!(Args::try_parse_from(argv).is_err(), "{bad:?} accepted");
        }
    }
}
