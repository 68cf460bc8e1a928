//! `--fd`: the vhost-user socket handed over by whoever starts the daemon.
//! libvirt and QEMU's own C backend pass one end of a connected socketpair;
//! a listening socket works too. Also the configuration file, which is how
//! a daemon started by libvirt gets its options.

mod common;

use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::Command;

use common::*;
use gpuswap_frontend::{FrontendConfig, GpuFrontend, Placement};
use gpuswap_protocol::format;
use gpuswap_testkit::{pattern, wait_for_path, ControlClient, Process, ScratchDir};

const FMT: u32 = format::B8G8R8X8_UNORM;

/// A transfer whose host copy the control socket confirms, and a scanout.
fn use_the_device(gpu: &mut GpuFrontend, ctl: &mut ControlClient, id: u32) {
    let pix = pattern(32 * 32 * 4, u64::from(id));
    gpu.resource_create_2d(id, FMT, 32, 32).unwrap();
    let p = gpu.ram_mut().alloc(1, Placement::Scattered).unwrap();
    gpu.ram().write_entries(&p.entries(), 0, &pix).unwrap();
    gpu.attach_backing(id, &p.entries()).unwrap();
    gpu.transfer_to_host_2d(id, rect(0, 0, 32, 32), 0).unwrap();
    gpu.detach_backing(id).unwrap();
    gpu.attach_backing(id, &p.entries()).unwrap();
    if gpu.display().is_some() {
        gpu.set_scanout(0, id, rect(0, 0, 32, 32)).unwrap();
        gpu.resource_flush(id, rect(0, 0, 32, 32)).unwrap();
    }
    let r = ctl.live(id);
    assert_eq!(r.host_hash, some_hash(&pix));
    assert_eq!(r.generation, 2);
}

/// Relay directories the daemon left in its TMPDIR.
fn relay_dirs(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("gpuswap-relay"))
        .collect()
}

/// libvirt's way: one end of a connected socketpair. The daemon serves the
/// connection, display channel included, and exits when it closes.
#[test]
fn connected_fd_is_served_until_it_closes() {
    for extra in [&[][..], &["--once"]] {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let mut d = Daemon::spawn_on_fd("connected", OwnedFd::from(theirs), extra);
        let mut gpu = GpuFrontend::from_stream(ours, FrontendConfig::default())
            .unwrap_or_else(|e| panic!("{extra:?}: {e}\n{}", d.log()));
        let mut ctl = d.ctl();
        assert_ne!(ctl.status().unwrap().acked(), 0);
        use_the_device(&mut gpu, &mut ctl, 1);
        // A second region and a fresh memory table pass through too.
        use_the_device(&mut gpu, &mut ctl, 2);
        assert!(
            relay_dirs(d.dir()).is_empty(),
            "the private socket outlived its connection"
        );
        d.assert_alive();
        drop(ctl);
        drop(gpu);
        let status = d
            .wait_exit(WAIT)
            .unwrap_or_else(|| panic!("{extra:?}: still running after the frontend left"));
        assert_eq!(status.code(), Some(0), "{extra:?}: {}", d.log());
        assert!(!d.control.exists(), "{extra:?}: control socket left behind");
        assert!(d.log().contains("nothing can reconnect"), "{}", d.log());
    }
}

/// A frontend that disappears mid-conversation (QEMU killed) ends the
/// daemon the same way.
#[test]
fn connected_fd_peer_killed_mid_request() {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut d = Daemon::spawn_on_fd("killed", OwnedFd::from(theirs), &[]);
    // Half a vhost-user header, then gone.
    use std::io::Write;
    (&ours).write_all(&[1, 0, 0, 0, 1, 0]).unwrap();
    drop(ours);
    let status = d.wait_exit(WAIT).expect("daemon still running");
    assert_eq!(status.code(), Some(0), "{}", d.log());
    assert!(!d.control.exists());
}

/// A listening socket: frontends one after another, or one with `--once`.
#[test]
fn listening_fd_accepts_frontends() {
    for once in [false, true] {
        let dir = ScratchDir::new("gsd", &format!("lfd-{once}")).unwrap();
        let path = dir.join("gpu.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let extra: &[&str] = if once { &["--once"] } else { &[] };
        let mut d = Daemon::spawn_on_fd("listening", OwnedFd::from(listener), extra);
        let rounds = if once { 1 } else { 3 };
        for round in 0..rounds {
            let mut gpu = GpuFrontend::connect(&path, FrontendConfig::default())
                .unwrap_or_else(|e| panic!("round {round}: {e}\n{}", d.log()));
            let mut ctl = d.ctl();
            use_the_device(&mut gpu, &mut ctl, 1);
            drop(gpu);
            if !once {
                d.wait_status("disconnect", |s| s.resources == 0);
            }
        }
        if once {
            let status = d.wait_exit(WAIT).expect("--once daemon did not exit");
            assert_eq!(status.code(), Some(0), "{}", d.log());
            assert!(!d.control.exists());
        } else {
            d.assert_alive();
        }
    }
}

/// What cannot be a vhost-user socket is refused with a message, exit 1.
#[test]
fn fd_that_is_no_unix_stream_socket_is_refused() {
    let file = std::fs::File::open("/dev/null").unwrap();
    let dgram = std::os::unix::net::UnixDatagram::unbound().unwrap();
    let cases: [(Option<OwnedFd>, &str); 3] = [
        (Some(OwnedFd::from(file)), "not a socket"),
        (Some(OwnedFd::from(dgram)), "not a unix stream socket"),
        (None, "not an open file descriptor"),
    ];
    for (fd, says) in cases {
        let out = match fd {
            Some(fd) => {
                let mut d = Daemon::spawn_on_fd_unchecked("badfd", fd);
                let status = d.wait_exit(WAIT).expect("daemon did not exit");
                (status.code(), d.log())
            }
            None => {
                let out = Command::new(DAEMON).arg("--fd=1000").output().unwrap();
                (
                    out.status.code(),
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                )
            }
        };
        assert_eq!(out.0, Some(1), "{says}: {}", out.1);
        assert!(out.1.contains(says), "{says}: {}", out.1);
        assert!(!out.1.contains("panicked"), "{}", out.1);
    }
}

/// Options from a file: `--config`, `{pid}` in the control socket and log
/// paths, the
/// command line winning, and the file found by itself next to an installed
/// binary (PREFIX/libexec -> PREFIX/etc/gpuswap/daemon.conf).
#[test]
fn config_file_supplies_options() {
    let scratch = ScratchDir::new("gsd", "config").unwrap();
    let dir = scratch.path();
    std::fs::create_dir_all(dir.join("libexec")).unwrap();
    std::fs::create_dir_all(dir.join("etc/gpuswap")).unwrap();
    let conf = dir.join("etc/gpuswap/daemon.conf");
    std::fs::write(
        &conf,
        format!(
            "# test\ncontrol-socket = {0}/run/{{pid}}.sock\nmax-host-memory = 3M\n\
             scanout=640x480\nlog-file = {0}/log/{{pid}}.log\n",
            dir.display()
        ),
    )
    .unwrap();
    let installed = dir.join("libexec/gpuswap-daemon");
    std::fs::copy(DAEMON, &installed).unwrap();

    for (binary, extra) in [
        (
            Path::new(DAEMON),
            vec!["--config".to_string(), conf.display().to_string()],
        ),
        (installed.as_path(), vec![]),
    ] {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let theirs = OwnedFd::from(theirs);
        let mut cmd = command_with_fd(binary, &theirs);
        cmd.args(&extra).env_remove("XDG_RUNTIME_DIR");
        let mut child = Process::spawn(&mut cmd, &dir.join("stderr")).unwrap();
        drop(theirs);
        let control = dir.join(format!("run/{}.sock", child.pid()));
        wait_for_path(&control, WAIT, || {
            (!child.is_running()).then(|| format!("{binary:?} exited"))
        })
        .unwrap();
        let gpu = GpuFrontend::from_stream(ours, FrontendConfig::default()).unwrap();
        let config = gpu.gpu_config().expect("config space");
        assert_eq!(config.num_scanouts, 1);
        let st = control_at(&control).status().unwrap();
        assert_eq!(st.max_host_memory, 3 << 20, "{binary:?}: {st:?}");
        drop(gpu);
        let status = child.wait_exit(WAIT).expect("the daemon exits");
        assert_eq!(status.code(), Some(0));
        assert!(!control.exists());
        let log = std::fs::read_to_string(dir.join(format!("log/{}.log", child.pid())))
            .expect("the log file");
        assert!(log.contains("frontend disconnected"), "{log}");
    }

    // The command line wins over the file.
    let out = Command::new(DAEMON)
        .args([
            "--config",
            &conf.display().to_string(),
            "--max-host-memory",
            "lots",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // A bad line is named.
    std::fs::write(&conf, "max-host-memory = 1G\nfd = 3\n").unwrap();
    let out = Command::new(DAEMON)
        .args(["--config", &conf.display().to_string()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("daemon.conf:2"), "{stderr}");
    // An explicit file that does not exist is an error, not a default.
    let out = Command::new(DAEMON)
        .args([
            "--config",
            "/nonexistent/daemon.conf",
            "--socket-path",
            "/tmp/x",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
