//! gpuswap-daemon: a vhost-user virtio-gpu backend that QEMU's
//! `vhost-user-gpu-pci` and crosvm attach to.

mod backend;
mod control;
mod display;

use std::os::fd::{FromRawFd, RawFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use clap::Parser;
use gpuswap_device::DeviceConfig;
use log::{error, info, warn};
use nix::sys::signal::{SigSet, Signal};
use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use crate::backend::GpuBackendDevice;

/// A vhost-user virtio-gpu backend with exact ATTACH/DETACH_BACKING, so a
/// guest can evict GPU buffers under memory pressure and restore them.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Listen for the frontend on this unix socket path.
    #[arg(long, conflicts_with = "fd", required_unless_present_any = ["fd", "print_capabilities"])]
    socket_path: Option<PathBuf>,

    /// Listen on this inherited, already-bound unix socket fd (libvirt).
    #[arg(long)]
    fd: Option<RawFd>,

    /// Print the backend capabilities as JSON and exit.
    #[arg(long)]
    print_capabilities: bool,

    /// Serve the JSON-lines control socket at this path.
    #[arg(long)]
    control_socket: Option<PathBuf>,

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

    /// Exit after the first frontend disconnects instead of waiting for the
    /// next one.
    #[arg(long)]
    once: bool,
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

fn main() {
    tune_allocator();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_micros()
        .init();
    let args = Args::parse();
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
        GpuBackendDevice::new(config).map_err(|e| format!("cannot create the device: {e}"))?,
    );

    let cleanup: Vec<PathBuf> = args
        .socket_path
        .iter()
        .chain(args.control_socket.iter())
        .cloned()
        .collect();
    handle_termination(cleanup)?;

    if let Some(path) = &args.control_socket {
        control::serve(path, backend.control_handle())
            .map_err(|e| format!("cannot serve {}: {e}", path.display()))?;
    }

    let mut listener = match (&args.socket_path, args.fd) {
        (Some(path), _) => Listener::new(path, true)
            .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?,
        // SAFETY: by the vhost-user backend program conventions the caller
        // passes a listening socket it no longer uses; we take ownership.
        (None, Some(fd)) => unsafe { Listener::from_raw_fd(fd) },
        (None, None) => return Err("need --socket-path or --fd".into()),
    };

    let current: Arc<Mutex<Option<vhost_user_backend::ShutdownHandle>>> = Default::default();
    loop {
        info!("waiting for a frontend");
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let mut daemon = VhostUserDaemon::new("gpuswap".into(), backend.clone(), mem)
            .map_err(|e| format!("cannot create the vhost-user daemon: {e}"))?;
        daemon
            .start(&mut listener)
            .map_err(|e| format!("cannot accept a frontend: {e}"))?;
        info!("frontend connected");
        if let Ok(mut slot) = current.lock() {
            *slot = daemon.shutdown_handle();
        }
        let result = daemon.wait();
        for handler in daemon.get_epoll_handlers() {
            handler.send_exit_event();
        }
        drop(daemon);
        match result {
            Ok(()) => info!("frontend disconnected"),
            Err(vhost_user_backend::Error::HandleRequest(
                vhost::vhost_user::Error::Disconnected,
            )) => {
                info!("frontend disconnected")
            }
            Err(e) => warn!("frontend connection ended: {e}"),
        }
        backend.disconnected();
        if args.once {
            // As on a signal, leave no dead socket behind (the listener
            // unlinks the vhost-user one when dropped).
            if let Some(path) = &args.control_socket {
                let _ = std::fs::remove_file(path);
            }
            return Ok(());
        }
    }
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
}
