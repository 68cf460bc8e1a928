//! The seccomp sandbox on the real daemon: on by default on every thread,
//! a whole session served under it, and `--seccomp` (also from the
//! configuration file) turning it to log-only or off. What a forbidden
//! syscall does is tested in the library (src/seccomp.rs), on a process
//! that installs the same filter.

mod common;

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

use common::*;
use gpuswap_frontend::{FrontendConfig, GpuFrontend, Placement};
use gpuswap_protocol::format;
use gpuswap_testkit::{pattern, poll_until, ControlClient, ScratchDir};
use nix::sys::signal::Signal;

/// A field of /proc/PID/status (or of one thread's), e.g. `Seccomp`.
fn status_field(status_path: &str, field: &str) -> String {
    let text =
        std::fs::read_to_string(status_path).unwrap_or_else(|e| panic!("{status_path}: {e}"));
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:\t")))
        .unwrap_or_else(|| panic!("no {field} in {status_path}:\n{text}"))
        .to_string()
}

/// The seccomp mode of every thread of `pid` (2 = filter, 0 = none).
fn thread_seccomp_modes(pid: u32) -> Vec<(String, String)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|t| {
            let dir = t.unwrap().path();
            let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
            let status = dir.join("status").display().to_string();
            (comm.trim().to_string(), status_field(&status, "Seccomp"))
        })
        .collect()
}

/// Waits until the daemon has installed its filter (it does so after the
/// sockets appear, just before serving).
fn wait_for_filter(d: &mut Daemon, expected: &str) {
    let path = format!("/proc/{}/status", d.pid());
    let installed = poll_until(WAIT, || {
        d.assert_alive();
        (status_field(&path, "Seccomp") == expected).then_some(())
    });
    assert!(
        installed.is_some(),
        "Seccomp never became {expected}:\n{}",
        d.log()
    );
}

/// Creates, attaches, transfers, shows, flushes, detaches and unrefs a
/// resource, checking the host copy through the control socket.
fn full_session(gpu: &mut GpuFrontend, ctl: &mut ControlClient) {
    let id = 1;
    let pix = pattern(64 * 64 * 4, 5);
    gpu.resource_create_2d(id, format::B8G8R8X8_UNORM, 64, 64)
        .unwrap();
    let pages = gpu.ram_mut().alloc(4, Placement::Scattered).unwrap();
    gpu.ram().write_entries(&pages.entries(), 0, &pix).unwrap();
    gpu.attach_backing(id, &pages.entries()).unwrap();
    gpu.transfer_to_host_2d(id, rect(0, 0, 64, 64), 0).unwrap();
    gpu.set_scanout(0, id, rect(0, 0, 64, 64)).unwrap();
    let display = gpu.display().expect("a display channel").clone();
    let mark = display.event_count();
    gpu.resource_flush(id, rect(0, 0, 64, 64)).unwrap();
    let (r, shown) = next_update(&display, mark);
    assert_eq!(r, rect(0, 0, 64, 64));
    assert_eq!(hash_hex(&shown), hash_hex(&pix));
    assert_eq!(ctl.live(id).host_hash, some_hash(&pix));
    gpu.detach_backing(id).unwrap();
    gpu.set_scanout(0, 0, rect(0, 0, 0, 0)).unwrap();
    gpu.resource_unref(id).unwrap();
    assert!(ctl.resource(id).unwrap().is_none());
    assert!(!ctl.trace(0, Some(id)).unwrap().is_empty());
    assert_eq!(ctl.counters().unwrap().resources, 0);
}

/// A default start: a filter on every thread, no_new_privs, and a full
/// session, a second frontend and SIGTERM all served under it.
#[test]
fn default_start_is_sandboxed_and_serves_frontends() {
    let mut d = Daemon::spawn("seccomp-default", &[]);
    wait_for_filter(&mut d, "2");
    let status = format!("/proc/{}/status", d.pid());
    assert_eq!(status_field(&status, "NoNewPrivs"), "1");
    let mut ctl = d.ctl();
    for round in 0..2 {
        let mut gpu = d.connect(FrontendConfig::default());
        full_session(&mut gpu, &mut ctl);
        let st = ctl.status().unwrap();
        assert_ne!(st.acked(), 0, "round {round}: {st:?}");
        // The threads that existed before the filter (signals, control)
        // got it too, and so did those started since.
        let modes = thread_seccomp_modes(d.pid());
        assert!(modes.len() >= 4, "{modes:?}");
        assert!(modes.iter().all(|(_, m)| m == "2"), "{modes:?}");
        drop(gpu);
        d.wait_status("frontend gone", |st| st.acked() == 0);
        d.assert_alive();
    }
    d.signal(Signal::SIGTERM);
    let exit = d.wait_exit(WAIT).expect("still running after SIGTERM");
    assert_eq!(exit.code(), Some(0), "{}", d.log());
    assert!(!d.control.exists());
}

/// An inherited connected socket (the relay, with its private socket made
/// under the filter) is served sandboxed too.
#[test]
fn connected_fd_is_served_sandboxed() {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut d = Daemon::spawn_on_fd("seccomp-fd", OwnedFd::from(theirs), &[]);
    let mut gpu = GpuFrontend::from_stream(ours, FrontendConfig::default())
        .unwrap_or_else(|e| panic!("{e}\n{}", d.log()));
    wait_for_filter(&mut d, "2");
    let mut ctl = d.ctl();
    full_session(&mut gpu, &mut ctl);
    drop(ctl);
    drop(gpu);
    let exit = d
        .wait_exit(WAIT)
        .expect("still running after the frontend left");
    assert_eq!(exit.code(), Some(0), "{}", d.log());
}

/// `--seccomp log` installs the filter too; `--seccomp off` none, and the
/// option works from the configuration file.
#[test]
fn seccomp_option_sets_the_mode() {
    for (extra, expected, nnp) in [
        (&["--seccomp", "log"][..], "2", "1"),
        (&["--seccomp", "kill"], "2", "1"),
        (&["--seccomp", "off"], "0", "0"),
    ] {
        let mut d = Daemon::spawn("seccomp-option", extra);
        wait_for_filter(&mut d, expected);
        // Served either way.
        let mut gpu = d.connect(FrontendConfig::default());
        full_session(&mut gpu, &mut d.ctl());
        let status = format!("/proc/{}/status", d.pid());
        assert_eq!(status_field(&status, "Seccomp"), expected, "{extra:?}");
        assert_eq!(status_field(&status, "NoNewPrivs"), nnp, "{extra:?}");
    }

    let dir = ScratchDir::new("gsd", "seccomp-conf").unwrap();
    let conf = dir.join("daemon.conf");
    std::fs::write(&conf, "seccomp = off\n").unwrap();
    let conf = conf.display().to_string();
    let d = Daemon::spawn("seccomp-conf", &["--config", &conf]);
    let mut ctl = d.ctl();
    ctl.status().unwrap();
    let status = format!("/proc/{}/status", d.pid());
    assert_eq!(status_field(&status, "Seccomp"), "0");
    // The command line wins over the file.
    drop(ctl);
    drop(d);
    let mut d = Daemon::spawn("seccomp-conf", &["--config", &conf, "--seccomp", "kill"]);
    wait_for_filter(&mut d, "2");
}
