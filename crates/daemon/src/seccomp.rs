//! The daemon's seccomp-bpf sandbox.
//!
//! Everything the guest and the frontend send is hostile input to the
//! daemon: descriptor chains, backing entries, vhost-user messages, control
//! requests. Once the daemon has done what it needs extra syscalls for
//! exactly once (parsing arguments, opening the log file, binding its
//! sockets, checking an inherited descriptor, tuning the allocator), it
//! installs an allow-list of the syscalls that serving needs, so that a bug
//! an attacker reaches cannot open files, start programs, reach the
//! network or trace other processes.
//!
//! One filter for the whole process, not one per thread. The daemon's
//! threads (control accept loop and clients, the signal thread, the relay
//! threads, and vhost-user-backend's main and vring worker threads) differ
//! by a few syscalls only: all of them log, allocate, take locks and make
//! threads of their own, and the two that face the guest most directly
//! (vhost-user main thread: SET_MEM_TABLE maps guest memory and the display
//! socket, GPU_SET_SOCKET; vring worker: everything the queues ask for)
//! together need nearly the whole set. vhost-user-backend also starts its
//! threads itself, so a per-thread filter for them would have to be
//! installed from inside its event loop. So the filter is installed once
//! with TSYNC, which puts it on the threads that already exist (signals,
//! control) as well; threads started later inherit it.
//!
//! The syscall set was found by running the daemon under
//! `strace -f` through its integration tests, the frontend crate's tests,
//! the inherited `--fd` tests and real guests (evict and blob tests), debug
//! and release builds; see [`allowed`] for each group's reason.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// What the filter does with a syscall that is not allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Kill the whole process (SECCOMP_RET_KILL_PROCESS): it ends by
    /// SIGSYS and, where core dumps are on, leaves one.
    Kill,
    /// Allow the syscall but have the kernel log it (SECCOMP_RET_LOG), to
    /// find a syscall missing from the allow-list.
    Log,
    /// No filter at all.
    Off,
}

/// Why the sandbox could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot set no_new_privs: {0}")]
    NoNewPrivs(std::io::Error),
    #[error("cannot build the seccomp filter: {0}")]
    Build(seccompiler::BackendError),
    #[error("cannot install the seccomp filter: {0}")]
    Install(seccompiler::Error),
    #[error("seccomp filters are not built for this architecture ({0})")]
    Arch(&'static str),
}

/// Builds and installs the filters for `mode` on every thread of the
/// process; nothing for [`Mode::Off`].
pub fn install(mode: Mode) -> Result<(), Error> {
    let programs = programs(mode, std::process::id())?;
    if !programs.is_empty() {
        fix_arena_limit();
    }
    apply(&programs)
}

/// Has glibc's allocator settle now what it would otherwise look up in a
/// file later.
///
/// The first time a thread needs a new malloc arena while more than eight
/// exist, glibc computes the arena limit from the number of CPUs, reading
/// `/sys/devices/system/cpu/online` with openat: a file open the sandbox
/// does not allow, and which strace caught in a control client thread.
/// Setting the limit explicitly to the value glibc would compute (8 arenas
/// per CPU on 64-bit) keeps the allocator as it was without that open.
fn fix_arena_limit() {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: sysconf takes an integer and returns one; for online CPUs
        // glibc reads the same sysfs file as the arena code.
        let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.clamp(1, 1 << 16);
        let per_cpu = if cfg!(target_pointer_width = "64") {
            8
        } else {
            2
        };
        let arenas = (cpus as libc::c_int) * per_cpu;
        // SAFETY: mallopt only changes an allocator parameter; glibc takes
        // its own lock for it, so other threads may be allocating.
        if unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) } != 1 {
            log::warn!("mallopt refused M_ARENA_MAX; a new thread may trip the sandbox");
        }
    }
}

/// The BPF programs for `mode` in a process whose id is `pid`, in the
/// order [`apply`] installs them; none for [`Mode::Off`].
///
/// There are two: one that answers clone3 with ENOSYS, and the allow-list.
/// clone3 passes its flags in a struct that a filter cannot read, so it
/// is refused and glibc falls back to clone, whose flags the allow-list
/// checks (threads only, no new processes). Both are consulted on every
/// syscall and the stricter answer wins, so clone3 has to be allowed by
/// the allow-list for the ENOSYS to reach glibc instead of a kill.
pub fn programs(mode: Mode, pid: u32) -> Result<Vec<BpfProgram>, Error> {
    let not_allowed = match mode {
        Mode::Kill => SeccompAction::KillProcess,
        Mode::Log => SeccompAction::Log,
        Mode::Off => return Ok(Vec::new()),
    };
    let arch = target_arch()?;
    let allow_list = SeccompFilter::new(
        allowed(pid).map_err(Error::Build)?,
        not_allowed,
        SeccompAction::Allow,
        arch,
    )
    .map_err(Error::Build)?;
    let no_clone3 = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(Error::Build)?;
    // The allow-list goes in last: it does not allow seccomp() itself.
    [no_clone3, allow_list]
        .into_iter()
        .map(|f| BpfProgram::try_from(f).map_err(Error::Build))
        .collect()
}

/// Sets no_new_privs and installs `programs` in order on every thread of
/// the process. Makes no allocation, so that a forked child of a
/// multithreaded process may call it.
pub fn apply(programs: &[BpfProgram]) -> Result<(), Error> {
    if programs.is_empty() {
        return Ok(());
    }
    // The kernel requires no_new_privs (or CAP_SYS_ADMIN) for an
    // unprivileged filter; it also keeps an exec, were one allowed, from
    // gaining privileges. Set here explicitly rather than relying on the
    // installer doing it.
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only and touches
    // no memory of ours.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(Error::NoNewPrivs(std::io::Error::last_os_error()));
    }
    for program in programs {
        seccompiler::apply_filter_all_threads(program).map_err(Error::Install)?;
    }
    Ok(())
}

fn target_arch() -> Result<TargetArch, Error> {
    let arch = std::env::consts::ARCH;
    // Syscall numbers below are libc's for the architecture built for; the
    // filter checks the audit architecture matches at run time.
    TargetArch::try_from(arch).map_err(|_| Error::Arch(arch))
}

/// `arg` (32 bits) equals `value`.
fn arg_eq(arg: u8, value: u64) -> Result<SeccompCondition, seccompiler::BackendError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
}

/// `arg` (64 bits) has none of the bits of `mask`.
fn arg_lacks(arg: u8, mask: u64) -> Result<SeccompCondition, seccompiler::BackendError> {
    SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(mask),
        0,
    )
}

/// `arg` (64 bits) has all the bits of `mask`.
fn arg_has(arg: u8, mask: u64) -> Result<SeccompCondition, seccompiler::BackendError> {
    SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(mask),
        mask,
    )
}

/// One rule per value: the syscall is allowed when `arg` is any of them.
fn any_of(arg: u8, values: &[u64]) -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
    values
        .iter()
        .map(|&v| SeccompRule::new(vec![arg_eq(arg, v)?]))
        .collect()
}

/// The allow-list: syscall number -> rules, any of which allows it (no
/// rules: allowed with any arguments).
fn allowed(pid: u32) -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
    let always = |syscalls: &[i64]| {
        syscalls
            .iter()
            .map(|&s| (s, Vec::new()))
            .collect::<Vec<_>>()
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();

    // Memory: the allocator (brk heap, mmap for large buffers and new
    // arenas, whose pages it makes writable with mprotect and hands back
    // with madvise), thread stacks and their guard pages, and guest memory
    // and the display's shared buffers mapped from the frontend's
    // descriptors. Nothing needs new executable memory.
    let no_exec = || SeccompRule::new(vec![arg_lacks(2, libc::PROT_EXEC as u64)?]);
    rules.insert(libc::SYS_mmap, vec![no_exec()?]);
    rules.insert(libc::SYS_mprotect, vec![no_exec()?]);
    rules.extend(always(&[
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_madvise,
        libc::SYS_brk,
    ]));

    // Threads: vhost-user-backend starts a vring worker per connection,
    // the control socket a thread per client, the relay two per inherited
    // connection. clone only for threads (see `programs` for clone3);
    // futex for every lock and join; the rest is what glibc and Rust's std
    // do when a thread starts (robust futex list, rseq, signal stack for
    // the stack overflow handler, its name) and ends.
    rules.insert(
        libc::SYS_clone,
        vec![SeccompRule::new(vec![arg_has(
            0,
            libc::CLONE_THREAD as u64,
        )?])?],
    );
    rules.insert(libc::SYS_prctl, any_of(0, &[libc::PR_SET_NAME as u64])?);
    rules.extend(always(&[
        libc::SYS_clone3,
        libc::SYS_futex,
        libc::SYS_set_robust_list,
        libc::SYS_rseq,
        libc::SYS_sigaltstack,
        libc::SYS_sched_getaffinity,
        libc::SYS_gettid,
        libc::SYS_getpid,
        libc::SYS_exit,
        libc::SYS_exit_group,
    ]));

    // Signals: the signal thread waits for SIGTERM/SIGINT/SIGHUP; threads
    // start with all signals blocked for a moment; an abort (a panic that
    // cannot unwind) raises SIGABRT on this process only.
    rules.insert(
        libc::SYS_tgkill,
        vec![SeccompRule::new(vec![arg_eq(0, u64::from(pid))?])?],
    );
    rules.extend(always(&[
        libc::SYS_rt_sigprocmask,
        libc::SYS_rt_sigtimedwait,
        libc::SYS_rt_sigreturn,
    ]));

    // Time: log timestamps (normally the vDSO, no syscall) and the
    // fault-injection completion delays (thread::sleep).
    rules.extend(always(&[
        libc::SYS_clock_gettime,
        libc::SYS_clock_nanosleep,
    ]));

    // Descriptors: vhost-user messages, the display socket, the control
    // socket and the relay (reads, writes, messages with descriptors),
    // epoll and eventfds for vhost-user-backend's loops, the log, and
    // random keys for the hash maps a new thread makes.
    rules.extend(always(&[
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_recvfrom,
        libc::SYS_sendto,
        libc::SYS_recvmsg,
        libc::SYS_sendmsg,
        libc::SYS_close,
        libc::SYS_epoll_create1,
        libc::SYS_epoll_ctl,
        libc::SYS_epoll_wait,
        libc::SYS_eventfd2,
        libc::SYS_getrandom,
    ]));
    // Duplicating a descriptor (try_clone) and checking one is open.
    rules.insert(
        libc::SYS_fcntl,
        any_of(1, &[libc::F_DUPFD_CLOEXEC as u64, libc::F_GETFD as u64])?,
    );

    // Sockets, unix only: accepting frontends and control clients,
    // vhost-user-backend connecting to the relay's private socket, which
    // is bound and listened on for each inherited connection, and the
    // relay checking who connected.
    rules.insert(libc::SYS_socket, any_of(0, &[libc::AF_UNIX as u64])?);
    rules.extend(always(&[
        libc::SYS_accept4,
        libc::SYS_bind,
        libc::SYS_listen,
        libc::SYS_connect,
        libc::SYS_shutdown,
        libc::SYS_getsockopt,
    ]));

    // Files: the relay's private directory (created, checked, removed),
    // and removing the sockets on exit.
    rules.extend(always(&[
        libc::SYS_mkdir,
        libc::SYS_rmdir,
        libc::SYS_unlink,
        libc::SYS_statx,
    ]));

    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Output};

    /// Names the probe's mode and forbidden action in its environment.
    const PROBE_MODE: &str = "GPUSWAP_SECCOMP_PROBE_MODE";
    const PROBE_ACTION: &str = "GPUSWAP_SECCOMP_PROBE_ACTION";
    /// The probe's exit codes once the forbidden syscall has returned.
    const SUCCEEDED: i32 = 40;
    const FAILED: i32 = 41;

    /// Syscalls the daemon never makes, each by a route an exploit could
    /// take; returns what the raw syscall returned.
    fn forbidden(action: &str) -> i64 {
        // SAFETY: for every arm below, raw syscalls with integer arguments or
        // pointers to static NUL-terminated strings; a forked child exits
        // at once; a mapping made is never touched.
        unsafe {
            match action {
                "inet_socket" => {
                    libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_STREAM, 0)
                }
                "exec_mapping" => libc::syscall(
                    libc::SYS_mmap,
                    0,
                    4096,
                    libc::PROT_READ | libc::PROT_EXEC,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                ),
                "fork" => {
                    let pid = libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0);
                    if pid == 0 {
                        libc::_exit(0);
                    }
                    pid
                }
                "kill" => libc::syscall(libc::SYS_kill, libc::getpid(), 0),
                "open_file" => libc::syscall(
                    libc::SYS_openat,
                    libc::AT_FDCWD,
                    c"/proc/self/status".as_ptr(),
                    libc::O_RDONLY | libc::O_CLOEXEC,
                ),
                "prctl_dumpable" => {
                    libc::syscall(libc::SYS_prctl, libc::PR_SET_DUMPABLE, 1, 0, 0, 0)
                }
                other => panic!("no forbidden action {other}"),
            }
        }
    }

    const FORBIDDEN: &[&str] = &[
        "inet_socket",
        "exec_mapping",
        "fork",
        "kill",
        "open_file",
        "prctl_dumpable",
    ];

    /// Not a test of its own: the body of the child process the tests
    /// below start, a process with the daemon's real filter installed.
    /// It first does what the daemon does under the filter (threads, a unix
    /// socket, memory), then the forbidden action.
    #[test]
    #[ignore = "run in a child process by the seccomp tests"]
    fn probe() {
        let mode = match std::env::var(PROBE_MODE).as_deref() {
            Ok("kill") => Mode::Kill,
            Ok("log") => Mode::Log,
            other => panic!("{PROBE_MODE} is {other:?}"),
        };
        let action = std::env::var(PROBE_ACTION).expect(PROBE_ACTION);
        install(mode).expect("install the filter");

        // Threads start under it (clone3 refused, clone with CLONE_THREAD)
        // and inherit it.
        let clone3 = std::thread::spawn(|| {
            // SAFETY: clone3 with a null struct would fail with EFAULT if
            // it were passed through; the filter answers first.
            let r = unsafe { libc::syscall(libc::SYS_clone3, 0, 0) };
            (r, std::io::Error::last_os_error().raw_os_error())
        })
        .join()
        .unwrap();
        assert_eq!(clone3, (-1, Some(libc::ENOSYS)));
        // SAFETY: socket takes integers; the descriptor is closed at once.
        let unix =
            unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        assert!(
            unix >= 0,
            "unix socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: `unix` is ours and open.
        unsafe { libc::close(unix) };
        let big = vec![7u8; 8 << 20];
        assert_eq!(big[big.len() - 1], 7);

        let result = if action == "none" {
            0
        } else {
            std::thread::spawn(move || forbidden(&action))
                .join()
                .unwrap()
        };
        // The exit status is the answer: the test harness's own output is
        // no place for it.
        std::process::exit(if result >= 0 { SUCCEEDED } else { FAILED });
    }

    fn run_probe(mode: &str, action: &str) -> Output {
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "seccomp::tests::probe",
                "--ignored",
                "--nocapture",
            ])
            .args(["--test-threads", "1"])
            .env(PROBE_MODE, mode)
            .env(PROBE_ACTION, action)
            .output()
            .expect("start the probe")
    }

    fn describe(out: &Output) -> String {
        format!(
            "{:?}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// Under `kill`, the daemon's own kind of work goes on, and each
    /// forbidden syscall ends the whole process by SIGSYS, even from a
    /// thread started after the filter.
    #[test]
    fn kill_mode_kills_the_process_on_a_forbidden_syscall() {
        let out = run_probe("kill", "none");
        assert_eq!(out.status.code(), Some(SUCCEEDED), "{}", describe(&out));
        for action in FORBIDDEN {
            let out = run_probe("kill", action);
            assert_eq!(
                out.status.signal(),
                Some(libc::SIGSYS),
                "{action}: {}",
                describe(&out)
            );
        }
    }

    /// Under `log`, the same syscalls go through (the kernel logs them).
    #[test]
    fn log_mode_allows_a_forbidden_syscall() {
        for action in FORBIDDEN {
            let out = run_probe("log", action);
            assert_eq!(
                out.status.code(),
                Some(SUCCEEDED),
                "{action}: {}",
                describe(&out)
            );
        }
    }

    #[test]
    fn off_mode_has_no_filter() {
        assert!(programs(Mode::Off, 1).unwrap().is_empty());
        assert_eq!(programs(Mode::Kill, 1).unwrap().len(), 2);
        assert_eq!(programs(Mode::Log, 1).unwrap().len(), 2);
    }
}
