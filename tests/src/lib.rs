//! What the end-to-end tests need beside the harness library
//! (`gpuswap-harness`: images, daemon, VM, agent, control and QMP
//! clients): a booted-guest session whose requests panic with the serial
//! log, the checks every real-guest test ends with, one guest at a time,
//! and libvirt.

use std::path::{Path, PathBuf};
use std::time::Duration;

use gpuswap_api::agent::{self, AgentRequest};
use gpuswap_harness::{
    boot_guest, kernel_problems_but_oom_kills_of, tail, Agent, Booted, ControlClient, Daemon,
    Images, ScratchDir, Vm, VmConfig,
};

pub mod libvirt;

/// Guest RAM a KASAN kernel takes for itself before anyone else gets any:
/// its shadow (an eighth of RAM), quarantine and larger image (measured:
/// 376 of 512 MiB left, against 481 with the debug kernel). Tests that
/// squeeze the guest add it ([`squeezed_guest_mib`]), so the squeeze means
/// the same on both.
pub const KASAN_OVERHEAD_MIB: u32 = 128;

/// RAM for a guest that a test squeezes, sized `mib` for the debug kernel:
/// on a KASAN kernel, plus what KASAN keeps for itself.
pub fn squeezed_guest_mib(mib: u32) -> u32 {
    if Images::get().kernel_is_kasan() {
        mib + KASAN_OVERHEAD_MIB
    } else {
        mib
    }
}

/// Serialises guest boots within one test binary: two TCG guests on a
/// two-core machine would only slow each other into timeouts.
pub fn one_guest_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A booted guest on its own gpuswap daemon, for the real-guest tests:
/// boot, agent requests that panic with the serial log, and `finish`, which
/// ends the guest and checks what every such test needs.
pub struct GuestSession {
    pub daemon: Daemon,
    pub vm: Option<Vm>,
    pub agent: Agent,
    /// The daemon's control socket.
    pub control: ControlClient,
    pub serial: PathBuf,
    /// Processes the test expects the OOM killer to take (a memory hog):
    /// their OOM reports are not kernel problems.
    pub expected_oom_kills: Vec<u32>,
    _dir: ScratchDir,
}

impl GuestSession {
    pub const EXIT_TIMEOUT: Duration = Duration::from_secs(120);
    const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

    /// Starts a daemon and boots the guest on it (`config.append` must run
    /// the agent), waiting for the agent; see [`boot_guest`].
    pub fn boot(name: &str, config: &VmConfig) -> GuestSession {
        Self::boot_with_daemon(name, config, &[])
    }

    /// As [`GuestSession::boot`], the daemon started with `daemon_args`
    /// (fault injection, e.g. `--fault-delay resource_detach_backing=5000`).
    pub fn boot_with_daemon(name: &str, config: &VmConfig, daemon_args: &[&str]) -> GuestSession {
        let images = Images::get();
        let Booted {
            dir,
            daemon,
            vm,
            mut agent,
        } = boot_guest(&images, name, config, daemon_args)
            .unwrap_or_else(|e| panic!("guest agent: {e}"));
        agent.set_timeout(Self::REQUEST_TIMEOUT);
        let control = daemon.control().expect("control socket");
        let serial = vm.serial_log.clone();
        GuestSession {
            daemon,
            vm: Some(vm),
            agent,
            control,
            serial,
            expected_oom_kills: Vec::new(),
            _dir: dir,
        }
    }

    /// An agent request that must succeed: its reply.
    pub fn req<R: AgentRequest>(&mut self, request: R) -> R::Reply {
        match self.agent.request(request) {
            Ok(v) => v,
            Err(e) => panic!("{e}\nguest serial log (tail):\n{}", tail(&self.serial, 40)),
        }
    }

    /// The request's errno if it failed, None if it worked.
    pub fn req_errno<R: AgentRequest>(&mut self, request: R) -> Option<i64> {
        match self.agent.request_errno(request) {
            Ok(errno) => errno,
            Err(e) => panic!("{e}\nguest serial log (tail):\n{}", tail(&self.serial, 40)),
        }
    }

    /// Ends the guest and checks: clean exit, clean kernel log, no protocol
    /// violation, the daemon alive, nothing left on the host.
    pub fn finish(mut self) {
        let _ = self.agent.request(agent::Exit { status: Some(0) });
        let vm = self.vm.take().expect("vm");
        let status = vm.wait(Self::EXIT_TIMEOUT).expect("QEMU exits");
        assert_guest_ended_cleanly_but_oom_kills_of(&self.serial, &self.expected_oom_kills);
        assert!(status.success(), "QEMU exited with {status}");
        assert!(self.daemon.alive(), "daemon died");
        assert_host_clean(&mut self.control);
    }
}

/// The guest's serial log shows a clean kernel and a workload that ended
/// with status 0.
pub fn assert_guest_ended_cleanly(serial: &Path) {
    assert_guest_ended_cleanly_but_oom_kills_of(serial, &[]);
}

/// As [`assert_guest_ended_cleanly`], the OOM kills of `expected` aside.
pub fn assert_guest_ended_cleanly_but_oom_kills_of(serial: &Path, expected: &[u32]) {
    let log = std::fs::read_to_string(serial).expect("serial log");
    let problems = kernel_problems_but_oom_kills_of(&log, expected);
    assert!(
        problems.is_empty(),
        "guest kernel reported problems:\n{}\n\nlog tail:\n{}",
        problems.join("\n"),
        tail(serial, 80)
    );
    assert!(
        log.contains("GPUSWAP-INIT-EXIT status=0"),
        "guest workload did not finish cleanly:\n{}",
        tail(serial, 40)
    );
}

/// The daemon saw no protocol violation and holds no resource once the
/// guest is gone.
pub fn assert_host_clean(control: &mut ControlClient) {
    let violations = control.violations().expect("trace");
    assert!(violations.is_empty(), "protocol violations: {violations:?}");
    let left = control.resources_left(Duration::from_secs(5));
    assert!(
        left.as_ref().is_ok_and(Vec::is_empty),
        "resources left: {left:?}"
    );
    let counters = control.counters().expect("counters");
    assert_eq!(counters.resources, 0, "{counters:?}");
    assert_eq!(counters.counters.violations, 0, "{counters:?}");
}
