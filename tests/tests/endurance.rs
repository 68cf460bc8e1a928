//! What long-lived daemons meet: a VMM killed in the middle of the work.

use std::time::Duration;

use gpuswap_api::agent::{self, Pattern, ScanMode};
use gpuswap_harness::qmp::Qmp;
use gpuswap_harness::{
    boot_guest, boot_guest_on, poll_every, tail, Agent, ControlClient, Images, VmConfig,
};
use gpuswap_tests::{assert_guest_ended_cleanly, assert_host_clean, GuestSession};

const SEED: u64 = 0x6b11;

/// Creates, writes and transfers `n` 512x512 buffers; their handles.
fn populate(agent: &mut Agent, n: u64) -> Vec<u32> {
    (0..n)
        .map(|i| {
            let handle = agent
                .request(agent::Create2d {
                    width: 512,
                    height: 512,
                    format: None,
                })
                .unwrap()
                .handle;
            agent
                .request(agent::Write {
                    handle,
                    seed: SEED,
                    bo: i,
                    version: 1,
                    pattern: Some(Pattern::Random),
                })
                .unwrap();
            agent.request(transfer(handle)).unwrap();
            handle
        })
        .collect()
}

fn transfer(handle: u32) -> agent::TransferToHost {
    agent::TransferToHost {
        handle,
        ..Default::default()
    }
}

/// A forced scan of `pages` pages that evicts.
fn evict(pages: u64) -> agent::ShrinkerScan {
    agent::ShrinkerScan {
        pages,
        mode: Some(ScanMode::Evict),
    }
}

/// Checks that buffer `i` (handle `handle`) holds version 1.
fn verify(agent: &mut Agent, i: usize, handle: u32) -> agent::Verified {
    agent
        .request(agent::Verify {
            handle,
            seed: SEED,
            bo: i as u64,
            version: 1,
            pattern: Some(Pattern::Random),
        })
        .unwrap()
}

/// The mappings of `pid` with more than 1 MiB resident, for a failure.
fn resident_mappings(pid: u32) -> String {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut out = Vec::new();
    let mut name = "";
    for line in smaps.lines() {
        if line
            .split_whitespace()
            .next()
            .is_some_and(|w| w.contains('-'))
        {
            name = line;
        } else if let Some(kib) = line.strip_prefix("Rss:") {
            let kib: u64 = kib
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .unwrap_or(0);
            if kib > 1024 {
                out.push(format!("{kib:>8} KiB  {name}"));
            }
        }
    }
    out.join("\n")
}

fn wait_for<T>(what: &str, timeout: Duration, done: impl FnMut() -> Option<T>) -> T {
    poll_every(Duration::from_millis(50), timeout, done)
        .unwrap_or_else(|| panic!("{what} within {timeout:?}"))
}

/// QEMU gets SIGKILL while the guest evicts, restores and transfers: the
/// daemon sees the frontend go, frees every resource and gives its memory
/// back, and a new QEMU on the same daemon boots and works.
#[test]
fn a_vmm_killed_under_load_leaves_nothing_behind() {
    let _guest = gpuswap_tests::one_guest_at_a_time();
    let images = Images::get();
    let config = VmConfig {
        memory_mib: 384,
        ..VmConfig::default()
    };
    let booted = boot_guest(&images, "vmm-kill", &config, &[]).expect("first boot");
    let (daemon, vm, mut agent) = (booted.daemon, booted.vm, booted.agent);
    let mut control: ControlClient = daemon.control().unwrap();
    // Before the load: the frontend is there, nothing allocated yet.
    let base_kib = daemon.rss_kib().unwrap();

    // Load: 32 MiB of buffers, then evictions, restores and transfers in a
    // loop on another thread while QEMU is killed under it.
    let handles = populate(&mut agent, 32);
    let loaded_kib = daemon.rss_kib().unwrap();
    let worker = std::thread::spawn(move || {
        let mut rounds = 0u64;
        loop {
            let step = agent.request(evict(4096)).and_then(|_| {
                handles
                    .iter()
                    .try_for_each(|&h| agent.request(transfer(h)).map(drop))
            });
            if step.is_err() {
                return rounds;
            }
            rounds += 1;
        }
    });
    std::thread::sleep(Duration::from_secs(4));
    let busy = control.counters().unwrap();
    assert!(busy.resources >= 32, "{busy:?}");
    let status = vm.kill().expect("SIGKILL QEMU");
    assert!(!status.success());
    let rounds = worker.join().unwrap();
    assert!(rounds > 0, "the load never ran");

    // The daemon noticed, freed everything and gave the memory back.
    wait_for(
        "the daemon frees everything",
        Duration::from_secs(10),
        || {
            let st = control.status().ok()?;
            (st.acked_features == "0x0" && st.resources == 0 && st.host_memory_used == 0)
                .then_some(st)
        },
    );
    let after_kib = daemon.rss_kib().unwrap();
    eprintln!("daemon RSS: {base_kib} KiB booted, {loaded_kib} KiB loaded, {after_kib} KiB after the kill");
    assert!(
        after_kib < base_kib + 8 * 1024,
        "RSS {after_kib} KiB after the kill, {base_kib} KiB before the load; mappings:\n{}",
        resident_mappings(daemon.pid())
    );
    let counters = control.counters().unwrap().counters;
    assert_eq!(
        counters.resources_created, counters.resources_unreferenced,
        "{counters:?}"
    );

    // A new QEMU on the same daemon boots and runs a short workload with
    // an eviction, clean.
    let (_dir, vm, mut agent) =
        boot_guest_on(&images, &daemon, "vmm-kill-again", &config).expect("second boot");
    agent.set_timeout(Duration::from_secs(300));
    let serial = vm.serial_log.clone();
    let handles = populate(&mut agent, 4);
    let scan = agent.request(evict(1 << 20)).unwrap();
    assert!(scan.freed >= 4 * 256, "{scan:?}");
    for (i, &h) in handles.iter().enumerate() {
        let v = verify(&mut agent, i, h);
        assert!(v.ok_content, "{v:?}\n{}", tail(&serial, 20));
        agent.request(agent::Close { handle: h }).unwrap();
    }
    let _ = agent.request(agent::Exit { status: Some(0) });
    let status = vm.wait(GuestSession::EXIT_TIMEOUT).expect("QEMU exits");
    assert!(status.success(), "QEMU exited with {status}");
    assert_guest_ended_cleanly(&serial);
    assert_host_clean(&mut control);
}

/// One QEMU, the guest rebooting over and over on the same daemon: each
/// boot starts with nothing on the host, runs buffers through eviction and
/// restore, and leaves two open. Every other boot ends in the guest's own
/// reboot (its processes exit first), the others in a hard reset from QMP
/// (`system_reset`: nothing in the guest cleans up, the device reset must
/// free them). No violation, a clean kernel log every boot.
#[test]
fn a_guest_rebooting_on_one_daemon_starts_clean_every_time() {
    const BOOTS: u64 = 10;
    let _guest = gpuswap_tests::one_guest_at_a_time();
    let images = Images::get();
    let dir = gpuswap_harness::run_dir("reboots");
    let daemon = gpuswap_harness::Daemon::start(&images.daemon, &dir, &[]).expect("daemon");
    let mut control = daemon.control().unwrap();
    let config = VmConfig {
        memory_mib: 384,
        reboot: true,
        ..VmConfig::default()
    };
    let mut vm = gpuswap_harness::Vm::start(&images, &daemon.socket, &dir, &config).expect("QEMU");
    let serial = vm.serial_log.clone();
    let mut qmp = Qmp::connect(&vm.qmp_socket, Duration::from_secs(10)).expect("QMP");
    let mut from = 0;
    for boot in 0..BOOTS {
        let mut agent = vm
            .agent_after(from, gpuswap_harness::BOOT_TIMEOUT)
            .unwrap_or_else(|e| panic!("boot {boot}: {e}"));
        agent.set_timeout(Duration::from_secs(300));
        let st = control.status().unwrap();
        assert_eq!(st.resources, 0, "boot {boot} started with {st:?}");

        let handles = populate(&mut agent, 4);
        let scan = agent.request(evict(1 << 20)).unwrap();
        assert!(scan.freed >= 4 * 256, "boot {boot}: {scan:?}");
        for (i, &h) in handles.iter().enumerate() {
            let v = verify(&mut agent, i, h);
            assert!(v.ok_content, "boot {boot}: {v:?}\n{}", tail(&serial, 20));
        }
        // Two closed, two left for the reset.
        for &h in &handles[..2] {
            agent.request(agent::Close { handle: h }).unwrap();
        }
        if boot % 2 == 1 {
            let log = std::fs::read(&serial).unwrap();
            let problems = gpuswap_harness::kernel_problems(&String::from_utf8_lossy(&log[from..]));
            assert!(problems.is_empty(), "boot {boot}: {problems:?}");
            from = log.len();
            drop(agent);
            qmp.execute("system_reset", None).expect("system_reset");
            continue;
        }
        // The agent answers, then /init says so and reboots the guest: the
        // next boot's log starts after that line.
        let _ = agent.request(agent::Exit { status: Some(0) });
        const EXIT: &str = "GPUSWAP-INIT-EXIT status=0";
        let end = wait_for("the guest's exit line", Duration::from_secs(60), || {
            let log = std::fs::read(&serial).ok()?;
            let at = String::from_utf8_lossy(&log[from..]).find(EXIT)?;
            Some(from + at + EXIT.len())
        });
        let log = std::fs::read(&serial).unwrap();
        let problems = gpuswap_harness::kernel_problems(&String::from_utf8_lossy(&log[from..end]));
        assert!(problems.is_empty(), "boot {boot}: {problems:?}");
        from = end;
    }
    let status = vm.kill().expect("SIGKILL QEMU");
    assert!(!status.success());
    let counters = control.counters().unwrap().counters;
    assert!(counters.resources_created >= BOOTS * 4, "{counters:?}");
    let log = std::fs::read_to_string(&serial).unwrap();
    assert_eq!(
        log.matches("GPUSWAP-INIT-EXIT status=0").count() as u64,
        BOOTS / 2,
        "{}",
        tail(&serial, 40)
    );
    let problems = gpuswap_harness::kernel_problems(&log);
    assert!(problems.is_empty(), "{problems:?}");
    assert_host_clean(&mut control);
}
