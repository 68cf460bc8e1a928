//! gpuswap-daemon as libvirt runs it: libvirt 11.3 (qemu:///system, started
//! without systemd) finds the daemon from its vhost-user descriptor, runs
//! `--print-capabilities`, and spawns it with `--fd=N` on a connected
//! socketpair; the daemon takes its control socket from its configuration
//! file. The guest's virtio-gpu runs on it, a workload with evictions keeps
//! every byte, and neither a guest that ends nor `virsh destroy` leaves a
//! daemon behind.

use std::path::PathBuf;
use std::time::Duration;

use gpuswap_api::agent::{self, AgentRequest, Pattern, ScanMode};
use gpuswap_api::control::Backing;
use gpuswap_harness::{
    poll_every, run_dir, tail, wait_for_agent, Agent, ControlClient, Images, ScratchDir,
    BOOT_TIMEOUT,
};
use gpuswap_tests::assert_guest_ended_cleanly;
use gpuswap_tests::libvirt::{
    self, backend_pid, cmdline, process_alive, Domain, DomainSpec, Installed,
};

const DOMAIN: &str = "gpuswap-libvirt-test";
const SEED: u64 = 0x11b7;

fn emulator() -> PathBuf {
    // The blob-capable QEMU when the test command built it; stock QEMU
    // (2D only) otherwise.
    std::env::var_os("GPUSWAP_QEMU")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/qemu-system-x86_64"))
}

/// A started domain's daemon and guest.
struct Started {
    pid: u32,
    control_socket: PathBuf,
    control: ControlClient,
    agent: Agent,
}

fn start(domain: &Domain, installed: &Installed, dir: &ScratchDir) -> Started {
    domain.start().expect("virsh start");
    let (pid, control_socket) = installed
        .wait_daemon(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}\nQEMU log:\n{}", domain.qemu_log()));
    // libvirt spawned our binary, on a connected socket.
    let args = cmdline(pid);
    assert_eq!(
        args.first().map(PathBuf::from),
        Some(installed.binary.clone()),
        "{args:?}"
    );
    assert!(
        args.len() == 2 && args[1].starts_with("--fd="),
        "libvirt passes --fd only: {args:?}"
    );
    assert_eq!(backend_pid(&domain.name), Some(pid), "libvirt's pid file");
    // Its options came from the configuration file (this log is one).
    let log = installed.log(pid);
    assert!(
        log.contains("serving the frontend on the inherited connected socket"),
        "daemon log:\n{log}"
    );
    let mut agent = wait_for_agent(
        &dir.join("agent.sock"),
        &dir.join("serial.log"),
        BOOT_TIMEOUT,
        || match domain.state() {
            Ok(s) if s == "running" => None,
            other => Some(format!("the domain is {other:?}")),
        },
    )
    .unwrap_or_else(|e| panic!("{e}\nQEMU log:\n{}", domain.qemu_log()));
    agent.set_timeout(Duration::from_secs(300));
    let mut control = ControlClient::connect(&control_socket).expect("control socket");
    // The guest's virtio-gpu driver negotiated with this daemon.
    let status = control.status().expect("status");
    assert_eq!(status.pid, pid, "{status:?}");
    assert_ne!(status.acked_features, "0x0", "{status:?}");
    Started {
        pid,
        control_socket,
        control,
        agent,
    }
}

fn wait_gone(pid: u32, what: &str) {
    let gone = poll_every(Duration::from_millis(100), Duration::from_secs(20), || {
        (!process_alive(pid)).then_some(())
    });
    assert!(gone.is_some(), "{what}: daemon {pid} still running");
}

struct Bo {
    handle: u32,
    res_id: u32,
    hash: String,
}

fn req<R: AgentRequest>(s: &mut Started, serial: &std::path::Path, r: R) -> R::Reply {
    s.agent
        .request(r)
        .unwrap_or_else(|e| panic!("{e}\nserial log:\n{}", tail(serial, 40)))
}

fn transfer(handle: u32) -> agent::TransferToHost {
    agent::TransferToHost {
        handle,
        ..Default::default()
    }
}

#[test]
fn libvirt_spawns_the_daemon_and_the_guest_runs_on_it() {
    let _guest = gpuswap_tests::one_guest_at_a_time();
    libvirt::up().expect("libvirt");
    let images = Images::get();
    let dir = run_dir("libvirt");
    let installed = Installed::new(&images, &dir).expect("install the daemon for libvirt");
    let serial = dir.join("serial.log");
    let spec = DomainSpec {
        name: DOMAIN,
        memory_mib: 512,
        emulator: &emulator(),
        kernel: &images.kernel,
        initrd: &images.initrd,
        cmdline: "console=ttyS0 panic=-1 gpuswap.cmd=agent",
        serial_log: &serial,
        agent_socket: &dir.join("agent.sock"),
    };
    let xml = spec.xml().expect("domain XML");
    let domain = Domain::define(DOMAIN, &xml, &dir.join("domain.xml")).expect("virsh define");

    // 1. A workload with evictions; the guest ends by itself.
    let mut s = start(&domain, &installed, &dir);
    let mut bos = Vec::new();
    for i in 0..4u64 {
        let v = req(
            &mut s,
            &serial,
            agent::Create2d {
                width: 256,
                height: 256,
                format: None,
            },
        );
        let (handle, res_id) = (v.handle, v.res_id);
        let w = req(
            &mut s,
            &serial,
            agent::Write {
                handle,
                seed: SEED,
                bo: i,
                version: 1,
                pattern: Some(Pattern::Random),
            },
        );
        req(&mut s, &serial, transfer(handle));
        let host = s
            .control
            .resource(res_id)
            .unwrap()
            .expect("resource live on our daemon");
        assert_eq!(
            host.host_hash.as_ref(),
            Some(&w.hash),
            "res {res_id}: {host:?}"
        );
        bos.push(Bo {
            handle,
            res_id,
            hash: w.hash,
        });
    }
    let scan = req(
        &mut s,
        &serial,
        agent::ShrinkerScan {
            pages: 1 << 20,
            mode: Some(ScanMode::Evict),
        },
    );
    let stats = req(&mut s, &serial, agent::ShrinkerStats {});
    assert!(stats.evictions >= 4, "scan {scan:?}, stats {stats:?}");
    for (i, bo) in bos.iter().enumerate() {
        assert_eq!(
            s.control.resource(bo.res_id).unwrap().unwrap().backing,
            Backing::Detached
        );
        let v = req(
            &mut s,
            &serial,
            agent::Verify {
                handle: bo.handle,
                seed: SEED,
                bo: i as u64,
                version: 1,
                pattern: Some(Pattern::Random),
            },
        );
        assert!(v.ok_content, "BO {i} lost its content: {v:?}");
        req(&mut s, &serial, transfer(bo.handle));
        let host = s.control.resource(bo.res_id).unwrap().unwrap();
        assert!(host.is_attached(), "{host:?}");
        assert_eq!(
            host.generation, 2,
            "re-attached after the eviction: {host:?}"
        );
        assert_eq!(host.host_hash.as_ref(), Some(&bo.hash), "{host:?}");
    }
    for bo in &bos {
        req(&mut s, &serial, agent::Close { handle: bo.handle });
    }
    let violations = s.control.violations().expect("trace");
    assert!(violations.is_empty(), "protocol violations: {violations:?}");
    let _ = s.agent.request(agent::Exit { status: Some(0) });
    domain
        .wait_shutoff(Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}\nserial log:\n{}", tail(&serial, 40)));
    assert_guest_ended_cleanly(&serial);
    wait_gone(s.pid, "after the guest ended");
    assert!(!s.control_socket.exists(), "control socket left behind");

    // 2. `virsh destroy` with a resource live.
    let _ = std::fs::remove_file(&serial);
    let mut s = start(&domain, &installed, &dir);
    let v = req(
        &mut s,
        &serial,
        agent::Create2d {
            width: 64,
            height: 64,
            format: None,
        },
    );
    req(&mut s, &serial, transfer(v.handle));
    assert!(s.control.resource(v.res_id).unwrap().is_some());
    domain.destroy().expect("virsh destroy");
    wait_gone(s.pid, "after virsh destroy");
    assert!(!s.control_socket.exists(), "control socket left behind");
    assert!(installed.daemons().is_empty(), "{:?}", installed.daemons());
}
