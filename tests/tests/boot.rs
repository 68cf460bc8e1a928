//! A real guest boots on a real vhost-user-gpu backend under QEMU 10, the
//! guest tool writes a buffer through the virtio-gpu DRM UAPI and transfers
//! it to the host, and the host side proves it arrived intact.

use std::time::Duration;

use gpuswap_api::agent;
use gpuswap_api::control::{Backing, ResourceKind};
use gpuswap_harness::{
    boot_guest, kernel_problems, poll_every, run_dir, tail, wait_for_path, Booted, Images, Process,
    Vm, VmConfig, BOOT_TIMEOUT,
};

const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

/// Creates a 2D BO, fills it with a pattern, transfers it; returns
/// (res_id, handle, guest hash).
fn write_and_transfer(
    agent: &mut gpuswap_harness::Agent,
    width: u32,
    height: u32,
) -> (u32, u32, String) {
    let bo = agent
        .request(agent::Create2d {
            width,
            height,
            format: None,
        })
        .expect("create a 2D BO");
    let written = agent
        .request(agent::Write {
            handle: bo.handle,
            seed: 7,
            bo: 0,
            version: 1,
            pattern: None,
        })
        .expect("write the pattern");
    agent
        .request(agent::TransferToHost {
            handle: bo.handle,
            ..Default::default()
        })
        .expect("transfer to host");
    (bo.res_id, bo.handle, written.hash)
}

fn assert_clean_guest_log(vm_log: &std::path::Path) {
    let log = std::fs::read_to_string(vm_log).expect("serial log");
    let problems = kernel_problems(&log);
    assert!(
        problems.is_empty(),
        "guest kernel reported problems:\n{}",
        problems.join("\n")
    );
    assert!(
        log.contains("GPUSWAP-INIT-EXIT status=0"),
        "guest workload did not finish cleanly:\n{}",
        tail(vm_log, 40)
    );
}

#[test]
fn guest_transfer_reaches_the_gpuswap_host_copy() {
    let _guest = gpuswap_tests::one_guest_at_a_time();
    let images = Images::get();
    let Booted {
        dir: _dir,
        mut daemon,
        vm,
        mut agent,
    } = boot_guest(&images, "boot", &VmConfig::default(), &[]).expect("guest agent");
    agent.set_timeout(Duration::from_secs(60));

    let hello = agent.request(agent::Hello {}).expect("hello");
    eprintln!("guest: {hello:?}");

    // 256 x 128 x 4 bytes is a whole number of pages, so the guest's hash of
    // its mapping covers exactly the host copy.
    let (res_id, handle, hash) = write_and_transfer(&mut agent, 256, 128);
    let mut control = daemon.control().expect("control socket");
    let res = control
        .resource(res_id)
        .expect("query")
        .unwrap_or_else(|| panic!("resource {res_id} is not live on the host"));
    assert_eq!(res.kind, ResourceKind::TwoD);
    assert_eq!(res.backing, Backing::Attached);
    assert_eq!(
        res.host_hash.as_ref(),
        Some(&hash),
        "host copy differs from what the guest wrote"
    );
    assert_eq!(
        res.backing_hash.as_ref(),
        Some(&hash),
        "attached backing differs from the guest's view"
    );

    agent.request(agent::Close { handle }).expect("close");
    // The guest frees the resource asynchronously: wait for the UNREF.
    let gone = poll_every(Duration::from_millis(50), Duration::from_secs(5), || {
        control
            .resource(res_id)
            .expect("query")
            .is_none()
            .then_some(())
    });
    assert!(gone.is_some(), "resource {res_id} outlived its GEM handle");

    let _ = agent.request(agent::Exit { status: Some(0) });
    let serial = vm.serial_log.clone();
    let status = vm
        .wait(EXIT_TIMEOUT)
        .expect("QEMU exits after the guest reboots");
    assert!(
        status.success(),
        "QEMU exited with {status}:\n{}",
        tail(&serial, 40)
    );
    assert_clean_guest_log(&serial);

    assert!(
        daemon.alive(),
        "the daemon must survive the frontend going away"
    );
    let mut control = daemon.control().expect("control socket after disconnect");
    // Disconnect frees everything; give the daemon a moment to notice.
    let mut counters = control.counters().expect("counters");
    poll_every(
        Duration::from_millis(50),
        Duration::from_millis(2500),
        || {
            counters = control.counters().expect("counters");
            (counters.resources == 0).then_some(())
        },
    );
    assert_eq!(
        counters.resources, 0,
        "resources left after disconnect: {counters:?}"
    );
    assert_eq!(counters.host_memory_used, 0);
    assert_eq!(counters.counters.violations, 0, "{counters:?}");
    assert!(counters.counters.attaches >= 1);
    let status = daemon.terminate().expect("daemon exits on SIGTERM");
    assert!(status.success(), "daemon exited with {status}");
}

/// The same guest and launcher against QEMU's own C backend, so a failure
/// can be told apart from a gpuswap bug.
#[test]
fn guest_boots_on_the_reference_c_backend() {
    const C_BACKEND: &str = "/usr/lib/qemu/vhost-user-gpu";
    assert!(
        std::path::Path::new(C_BACKEND).exists(),
        "{C_BACKEND} is missing: run `cargo xtask setup` (package qemu-system-gui)"
    );
    let _guest = gpuswap_tests::one_guest_at_a_time();
    let images = Images::get();
    let dir = run_dir("boot-c");
    let socket = dir.join("c-gpu.sock");
    let mut backend = Process::spawn(
        std::process::Command::new(C_BACKEND).arg(format!("--socket-path={}", socket.display())),
        &dir.join("c-backend.log"),
    )
    .expect("start the C backend");
    wait_for_path(&socket, Duration::from_secs(10), || {
        backend
            .try_reap()
            .map(|status| format!("the C backend exited ({status})"))
    })
    .expect("C backend socket");

    let mut vm = Vm::start(&images, &socket, &dir, &VmConfig::default()).expect("start QEMU");
    let mut agent = vm.agent(BOOT_TIMEOUT).expect("guest agent");
    agent.set_timeout(Duration::from_secs(60));
    let (_, handle, hash) = write_and_transfer(&mut agent, 256, 128);
    let reread = agent.request(agent::Hash { handle }).expect("hash");
    assert_eq!(reread.hash, hash);
    agent.request(agent::Close { handle }).expect("close");
    let _ = agent.request(agent::Exit { status: Some(0) });
    let serial = vm.serial_log.clone();
    let status = vm.wait(EXIT_TIMEOUT).expect("QEMU exits");
    assert!(
        status.success(),
        "QEMU exited with {status}:\n{}",
        tail(&serial, 40)
    );
    assert_clean_guest_log(&serial);
    let _ = backend.kill();
}

/// A guest whose agent finds no port tells the host why: the boot fails
/// at once (no retry anywhere), and the error carries the init's port
/// report, the virtio devices, the ports the guest did see and where
/// each CPU's interrupts went, which is what tells a lost control-queue
/// interrupt from a device that never probed.
#[test]
fn a_guest_without_its_agent_port_reports_what_it_saw() {
    let _guest = gpuswap_tests::one_guest_at_a_time();
    let images = Images::get();
    let config = VmConfig {
        append: "gpuswap.cmd=agent gpuswap.args=--port,org.gpuswap.absent,--port-wait,2".into(),
        ..VmConfig::default()
    };
    let Err(e) = boot_guest(&images, "boot-no-port", &config, &[]) else {
        panic!("the agent answered on a port it was told not to use");
    };
    for line in [
        "no virtio-serial port named \"org.gpuswap.absent\"",
        "org.gpuswap.agent",
        "GPUSWAP-PORTS virtio-ports: vport",
        "GPUSWAP-PORTS interrupts:",
        "GPUSWAP-PORTS device virtio",
    ] {
        assert!(e.contains(line), "{line:?} missing from:\n{e}");
    }
}
