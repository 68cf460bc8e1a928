//! A memory hog that pushes the guest into reclaim, so that the virtio-gpu
//! shrinker gets asked to evict GPU buffers.
//!
//! # Design
//!
//! The hog memory does not live in the agent. It lives in a **forked child
//! process** that the agent controls over two pipes:
//!
//! - The kernel's OOM killer must be able to end the pressure without taking
//!   the agent (and with it the host's only channel into the guest) along.
//!   Right after the fork, before the child touches any memory, the agent
//!   sets `/proc/<child>/oom_score_adj` to 1000 (raising needs no
//!   privilege), so whenever the hog exists it is the OOM killer's first
//!   choice: an OOM kill frees the hog's RAM and swap slots and nothing else.
//!   Had the hog lived in the agent, an OOM kill would have ended the agent
//!   too. The agent also lowers its own score to -1000 at startup where it
//!   may ([`protect_agent_from_oom`]); programs it `run`s get 0 back.
//! - The child is forked without exec, from a possibly multi-threaded process,
//!   so it only makes raw syscalls (read, write, mmap, mremap, munmap,
//!   madvise, close, prctl, _exit) and computes the fill pattern: no
//!   allocation, no locks, no panics.
//! - Right after the fork the child closes every inherited file descriptor
//!   but its two pipe ends (so it holds neither the DRM file nor the agent
//!   port) and unmaps the GPU buffer mappings it inherited (otherwise its
//!   copies would keep closed GEM objects alive). It asks for SIGKILL when the
//!   agent dies (PR_SET_PDEATHSIG; strictly: when the agent *thread* that
//!   forked it ends, which for the agent is its main thread) and exits on EOF
//!   of its command pipe too.
//! - Protocol: the agent writes the wanted size in MiB (u64 LE); the child
//!   resizes and answers with the size it now holds (i64 LE, >= 0) or a
//!   negated errno (the old size is then kept). EOF on the reply pipe means
//!   the child died. A SIGKILL the agent did not send is reported as
//!   `oom_killed` (that is what the OOM killer sends; a `kill -9` from
//!   elsewhere looks the same); any other death is an error. Either way the
//!   next request starts a fresh child (one that finds the child already
//!   dead starts it at once).
//!
//! # Memory
//!
//! One anonymous private mapping (`mmap`, not malloc; never mlocked, so it is
//! swappable), grown with `mremap(MREMAP_MAYMOVE)` and shrunk by unmapping the
//! tail; `mib: 0` kills the child, which releases everything (RAM and swap
//! slots). `MADV_NOHUGEPAGE` keeps it on 4 KiB pages so reclaim swaps it page
//! by page without compaction stalls. Every new page is written (see [`fill`]):
//! half random, so zram can neither store it as same-filled nor shrink it
//! much below half a page; a swapped-out hog page still costs RAM in zram, so
//! the pressure stays, without filling zram with incompressible data.

use std::fs::{self, File};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::libc;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, getpid, pipe2, ForkResult, Pid};

use crate::error::{Error, Result};
use crate::pattern;

/// Bytes per MiB.
pub const MIB: usize = 1 << 20;

/// The OOM score adjustment of the hog child: always the first victim.
pub const HOG_OOM_SCORE_ADJ: i32 = 1000;

/// The OOM score adjustment the agent asks for itself: never a victim.
pub const AGENT_OOM_SCORE_ADJ: i32 = -1000;

use gpuswap_api::agent::HogReport;

/// The agent's handle on the hog child (none until the first non-zero size).
#[derive(Debug, Default)]
pub struct Hog {
    child: Option<Child>,
    /// Children started so far: varies the content between children.
    started: u64,
}

impl Hog {
    /// An empty hog.
    pub fn new() -> Hog {
        Hog::default()
    }

    /// MiB currently held (0 without a child).
    pub fn mib(&self) -> u64 {
        self.child.as_ref().map_or(0, |c| c.mib)
    }

    /// The hog child's pid, if one runs.
    pub fn pid(&self) -> Option<Pid> {
        self.child.as_ref().map(|c| c.pid)
    }

    /// Resize the hog to exactly `mib` MiB; `limit_mib` is the largest size
    /// accepted (the agent passes MemTotal). `inherited` are the address
    /// ranges `(start, len)` of shared mappings the child must unmap right
    /// after a fork (the GPU buffer mappings).
    pub fn set(
        &mut self,
        mib: u64,
        limit_mib: u64,
        inherited: &[(usize, usize)],
    ) -> Result<HogReport> {
        let start = Instant::now();
        if mib > limit_mib {
            return Err(Error::msg(format!(
                "hog of {mib} MiB is larger than the {limit_mib} MiB allowed (MemTotal)"
            )));
        }
        // Does the child still live? A death between requests is reported now.
        let mut oom_killed = false;
        let mut killed_pid = None;
        if let Some(child) = &mut self.child {
            match waitpid(child.pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => {}
                Ok(status) => {
                    child.reaped = true;
                    killed_pid = Some(child.pid.as_raw());
                    self.child = None;
                    if !killed_by_sigkill(status) {
                        return Err(Error::msg(format!(
                            "the hog child had died ({status:?}); the next hog request \
                             starts a new one"
                        )));
                    }
                    oom_killed = true;
                }
                Err(e) => return Err(Error::sys("waitpid hog", e)),
            }
        }
        if mib == 0 {
            // Killing releases everything, swap slots included.
            self.child = None;
            return Ok(HogReport {
                mib: 0,
                ms: ms_since(start),
                oom_killed,
                pid: None,
                killed_pid,
            });
        }
        if self.child.is_none() {
            self.started += 1;
            let seed = pattern::mix((u64::from(std::process::id()) << 32) | self.started);
            self.child = Some(Child::spawn(seed, inherited)?);
        }
        let child = self.child.as_mut().expect("spawned above");
        match child.request(mib) {
            Ok(held) if held >= 0 => {
                child.mib = held as u64;
                Ok(HogReport {
                    mib: child.mib,
                    ms: ms_since(start),
                    oom_killed,
                    pid: Some(child.pid.as_raw()),
                    killed_pid,
                })
            }
            Ok(neg) => {
                let errno = Errno::from_raw(i32::try_from(-neg).unwrap_or(libc::EINVAL));
                let killed = if oom_killed {
                    "; the previous hog child had been OOM-killed"
                } else {
                    ""
                };
                Err(Error::sys(
                    format!(
                        "hog: resize from {} to {mib} MiB (the old size is kept{killed})",
                        child.mib
                    ),
                    errno,
                ))
            }
            Err(died) => {
                let pid = child.pid.as_raw();
                let status = waitpid(child.pid, None);
                // Unless waiting failed, the pid is no longer ours to kill.
                child.reaped = status.is_ok();
                self.child = None;
                let status = status.map_err(|e| Error::sys("waitpid hog", e))?;
                if killed_by_sigkill(status) {
                    Ok(HogReport {
                        mib: 0,
                        ms: ms_since(start),
                        oom_killed: true,
                        pid: None,
                        killed_pid: Some(pid),
                    })
                } else {
                    Err(Error::msg(format!(
                        "hog child died ({status:?}) after {died}"
                    )))
                }
            }
        }
    }
}

/// A death by SIGKILL (what the OOM killer sends).
fn killed_by_sigkill(status: WaitStatus) -> bool {
    matches!(status, WaitStatus::Signaled(_, Signal::SIGKILL, _))
}

fn ms_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Lower this process's OOM score adjustment to [`AGENT_OOM_SCORE_ADJ`] (needs
/// CAP_SYS_RESOURCE: the agent runs as root in the guest). The hog child sets
/// its own score to [`HOG_OOM_SCORE_ADJ`] regardless.
pub fn protect_agent_from_oom() -> Result<()> {
    let path = "/proc/self/oom_score_adj";
    fs::write(path, AGENT_OOM_SCORE_ADJ.to_string()).map_err(|e| Error::io(path, &e))
}

/// The running hog child.
#[derive(Debug)]
struct Child {
    pid: Pid,
    cmd: File,
    reply: File,
    mib: u64,
    /// Already waited for: the pid may belong to someone else by now.
    reaped: bool,
}

impl Child {
    fn spawn(seed: u64, inherited: &[(usize, usize)]) -> Result<Child> {
        let (cmd_r, cmd_w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe2", e))?;
        let (reply_r, reply_w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe2", e))?;
        let parent = getpid();
        // SAFETY: the child branch only calls `child_main`, which makes raw
        // syscalls and computes the pattern (no allocation, locks or
        // unwinding: all that is allowed after fork in a possibly
        // multi-threaded process) and never returns.
        match unsafe { fork() }.map_err(|e| Error::sys("fork hog", e))? {
            ForkResult::Child => {
                let keep = [cmd_r.as_raw_fd(), reply_w.as_raw_fd()];
                // SAFETY: see above; `inherited` lists mappings the parent
                // made and the child never uses.
                unsafe { child_main(keep, inherited, parent.as_raw(), seed) }
            }
            ForkResult::Parent { child: pid } => {
                drop((cmd_r, reply_w));
                let child = Child {
                    pid,
                    cmd: File::from(cmd_w),
                    reply: File::from(reply_r),
                    mib: 0,
                    reaped: false,
                };
                // The child waits for its first command, so it has not
                // touched any memory yet. On failure `child` is killed on drop.
                let path = format!("/proc/{pid}/oom_score_adj");
                fs::write(&path, HOG_OOM_SCORE_ADJ.to_string())
                    .map_err(|e| Error::io(&path, &e))?;
                Ok(child)
            }
        }
    }

    /// Send a size, read the answer; `Err` (what failed) when the child died.
    fn request(&mut self, mib: u64) -> std::result::Result<i64, String> {
        self.cmd
            .write_all(&mib.to_le_bytes())
            .map_err(|e| format!("writing the command: {e}"))?;
        let mut buf = [0u8; 8];
        match self.reply.read_exact(&mut buf) {
            Ok(()) => Ok(i64::from_le_bytes(buf)),
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => Err("EOF on the reply".into()),
            Err(e) => Err(format!("reading the reply: {e}")),
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = kill(self.pid, Signal::SIGKILL);
            let _ = waitpid(self.pid, None);
        }
    }
}

/// The hog child: serve resize commands until EOF, then exit.
///
/// # Safety
/// Only to be called in a freshly forked child; never returns. `inherited`
/// must be mappings the child does not use.
unsafe fn child_main(keep: [RawFd; 2], inherited: &[(usize, usize)], parent: i32, seed: u64) -> ! {
    let [cmd, reply] = keep;
    // SAFETY: plain syscalls on integers; none of them touch Rust-owned memory
    // except the munmap of `inherited`, which the caller guarantees is unused.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
        if libc::getppid() != parent {
            libc::_exit(0);
        }
        close_all_but(keep);
        for &(start, len) in inherited {
            libc::munmap(start as *mut libc::c_void, len);
        }
    }
    let mut region = Region {
        base: std::ptr::null_mut(),
        mib: 0,
    };
    let mut cursor = 0;
    loop {
        let mut poll = libc::pollfd {
            fd: cmd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd, count 1.
        if unsafe { libc::poll(&mut poll, 1, TOUCH_INTERVAL_MS) } == 0 {
            cursor = region.touch(cursor, TOUCH_MIB);
            continue;
        }
        let mut buf = [0u8; 8];
        // SAFETY: `buf` is a live local array of the length passed.
        if !unsafe { io_full(cmd, buf.as_mut_ptr(), buf.len(), false) } {
            // EOF: the agent went away.
            // SAFETY: `_exit` ends the child without running parent state.
            unsafe { libc::_exit(0) }
        }
        let answer = region.resize(u64::from_le_bytes(buf), seed);
        let out = answer.to_le_bytes();
        // SAFETY: `out` is a live local array of the length passed (only read).
        if !unsafe { io_full(reply, out.as_ptr().cast_mut(), out.len(), true) } {
            // SAFETY: as above.
            unsafe { libc::_exit(1) }
        }
    }
}

/// Close every file descriptor except the two in `keep`.
///
/// # Safety
/// Only in the forked child (closes descriptors Rust objects may own).
unsafe fn close_all_but(keep: [RawFd; 2]) {
    let (lo, hi) = (keep[0].min(keep[1]) as u32, keep[0].max(keep[1]) as u32);
    // The gaps around `lo` and `hi` (distinct, non-negative descriptors).
    let ranges = [
        lo.checked_sub(1).map(|last| (0, last)),
        hi.checked_sub(1).map(|last| (lo + 1, last)),
        Some((hi + 1, u32::MAX)),
    ];
    for (first, last) in ranges.into_iter().flatten() {
        if first > last {
            continue;
        }
        // SAFETY: close_range only closes descriptors.
        let r = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
        if r != 0 {
            // No close_range (kernel < 5.9): close one by one.
            let last = last.min(65535);
            for fd in first..=last {
                // SAFETY: as above.
                unsafe { libc::close(fd as RawFd) };
            }
        }
    }
}

/// read(2) or write(2) all of `len` bytes at `buf`, retrying EINTR. False on
/// EOF or an error.
///
/// # Safety
/// `buf` must be valid for `len` bytes (writable when reading).
unsafe fn io_full(fd: RawFd, buf: *mut u8, len: usize, write: bool) -> bool {
    let mut done = 0;
    while done < len {
        // SAFETY: `buf + done .. buf + len` is within the caller's buffer.
        let n = unsafe {
            let p = buf.add(done).cast::<libc::c_void>();
            if write {
                libc::write(fd, p, len - done)
            } else {
                libc::read(fd, p, len - done)
            }
        };
        if n > 0 {
            done += n as usize;
        } else if n < 0 && Errno::last() == Errno::EINTR {
            continue;
        } else {
            return false;
        }
    }
    true
}

/// Between commands the child reads one byte of every page of the next
/// `TOUCH_MIB` MiB each `TOUCH_INTERVAL_MS`, round robin: the hog is a
/// working set, not a block reclaim can swap out once and forget, so the
/// pressure lasts (swapped-out hog pages keep coming back).
const TOUCH_INTERVAL_MS: libc::c_int = 100;
const TOUCH_MIB: usize = 8;

/// The child's one anonymous mapping of `mib` MiB at `base`.
struct Region {
    base: *mut u8,
    mib: usize,
}

impl Region {
    /// Resize to `want` MiB and fill the new part; the size now held, or a
    /// negated errno (the old size is then kept).
    fn resize(&mut self, want: u64, seed: u64) -> i64 {
        let Some(want) = usize::try_from(want)
            .ok()
            .filter(|w| w.checked_mul(MIB).is_some())
        else {
            return -i64::from(libc::EOVERFLOW);
        };
        let old = self.mib;
        if want == old {
            return old as i64;
        }
        if want < old {
            // SAFETY: the tail lies inside our own mapping, which no Rust
            // reference points into outside `fill`.
            let r = unsafe { libc::munmap(self.base.add(want * MIB).cast(), (old - want) * MIB) };
            if r != 0 {
                return -i64::from(Errno::last_raw());
            }
            self.mib = want;
            if want == 0 {
                self.base = std::ptr::null_mut();
            }
            return want as i64;
        }
        // SAFETY: a fresh anonymous mapping (or an mremap of our own one)
        // cannot alias anything else.
        let p = unsafe {
            if old == 0 {
                libc::mmap(
                    std::ptr::null_mut(),
                    want * MIB,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            } else {
                libc::mremap(
                    self.base.cast(),
                    old * MIB,
                    want * MIB,
                    libc::MREMAP_MAYMOVE,
                )
            }
        };
        if p == libc::MAP_FAILED {
            return -i64::from(Errno::last_raw());
        }
        // SAFETY: advice on our own mapping; failure (no THP) is harmless.
        unsafe { libc::madvise(p, want * MIB, libc::MADV_NOHUGEPAGE) };
        self.base = p.cast();
        self.mib = want;
        for chunk in old..want {
            // SAFETY: MiB `chunk` lies inside the `want`-MiB read-write mapping
            // just made, which nothing else references.
            let bytes = unsafe { std::slice::from_raw_parts_mut(self.base.add(chunk * MIB), MIB) };
            fill(bytes, seed, chunk as u64);
        }
        want as i64
    }
}

impl Region {
    /// Reads a byte of each page of `mib` MiB from MiB `cursor` on
    /// (wrapping); returns where the next touch starts.
    fn touch(&self, cursor: usize, mib: usize) -> usize {
        if self.mib == 0 {
            return 0;
        }
        let mut chunk = cursor % self.mib;
        for _ in 0..mib.min(self.mib) {
            for page in (0..MIB).step_by(4096) {
                // SAFETY: inside MiB `chunk` of our own read-write mapping;
                // a volatile read so the fault (swap-in) really happens.
                unsafe { std::ptr::read_volatile(self.base.add(chunk * MIB + page)) };
            }
            chunk = (chunk + 1) % self.mib;
        }
        chunk
    }
}

/// The hog content of MiB `chunk`, distinct per page, MiB and seed: the
/// first half of each page random, the rest one repeated word. Like most
/// application memory it compresses about 2:1 on zram, and no page is
/// same-filled (which zram would store for free). Incompressible pages
/// would make swapping the hog pointless: reclaim would then fill zram with
/// them until its own allocations fail.
pub fn fill(bytes: &mut [u8], seed: u64, chunk: u64) {
    const HALF_PAGE_WORDS: usize = 256;
    let key = pattern::key(seed, chunk, 0);
    for (i, word) in bytes.chunks_exact_mut(8).enumerate() {
        let value = if i % (2 * HALF_PAGE_WORDS) < HALF_PAGE_WORDS {
            pattern::word(key, i as u64)
        } else {
            key
        };
        word.copy_from_slice(&value.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `RssAnon` of `pid` in KiB.
    fn rss_anon_kib(pid: Pid) -> u64 {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("RssAnon:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Wait until `pid` has died (a zombie not yet reaped).
    fn wait_zombie(pid: Pid) {
        for _ in 0..1000 {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
            // "pid (comm) S ...": the state follows the last ')'.
            let state = stat.rsplit_once(") ").unwrap().1.chars().next();
            if state == Some('Z') {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        panic!("{pid} did not die");
    }

    #[test]
    fn fill_is_distinct_per_page_and_chunk_and_never_same_filled() {
        let mut a = vec![0u8; MIB];
        let mut b = vec![0u8; MIB];
        fill(&mut a, 7, 0);
        fill(&mut b, 7, 1);
        assert_ne!(a, b);
        for page in a.chunks(4096) {
            let first = &page[..8];
            assert!(
                page.chunks(8).any(|w| w != first),
                "a same-filled page would be stored for free by zram"
            );
        }
        assert_ne!(a[..4096], a[4096..8192]);
    }

    #[test]
    fn grows_shrinks_and_releases() {
        let mut hog = Hog::new();
        assert!(hog
            .set(10, 4, &[])
            .unwrap_err()
            .message
            .contains("larger than"));
        assert_eq!(hog.pid(), None);

        let r = hog.set(2, 64, &[]).unwrap();
        assert_eq!((r.mib, r.oom_killed), (2, false));
        let pid = hog.pid().unwrap();
        assert_eq!(r.pid, Some(pid.as_raw()));
        let adj = fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).unwrap();
        assert_eq!(adj.trim(), "1000");
        let small = rss_anon_kib(pid);

        let r = hog.set(10, 64, &[]).unwrap();
        assert_eq!(r.mib, 10);
        assert_eq!(hog.pid(), Some(pid), "resized in place");
        let big = rss_anon_kib(pid);
        assert!(big >= small + 7 * 1024, "{small} -> {big} KiB");

        let r = hog.set(3, 64, &[]).unwrap();
        assert_eq!((r.mib, hog.mib()), (3, 3));
        let shrunk = rss_anon_kib(pid);
        assert!(shrunk + 6 * 1024 <= big, "{big} -> {shrunk} KiB");

        let r = hog.set(0, 64, &[]).unwrap();
        assert_eq!((r.mib, r.pid, r.oom_killed), (0, None, false));
        assert_eq!(hog.pid(), None);
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
        // Releasing nothing is fine too.
        assert_eq!(hog.set(0, 64, &[]).unwrap().mib, 0);
    }

    #[test]
    fn a_killed_hog_is_reported_and_restarted() {
        let mut hog = Hog::new();
        hog.set(1, 64, &[]).unwrap();
        let pid = hog.pid().unwrap();
        // What the OOM killer does, while the hog is idle.
        kill(pid, Signal::SIGKILL).unwrap();
        wait_zombie(pid);
        let r = hog.set(2, 64, &[]).unwrap();
        assert!(r.oom_killed);
        assert_eq!(r.mib, 2);
        let new = hog.pid().unwrap();
        assert_ne!(new, pid);
        // Reported once.
        assert!(!hog.set(1, 64, &[]).unwrap().oom_killed);

        // Killed just before (or while) a request: reported by that request,
        // which either finds the corpse and starts anew or sees the reply
        // pipe close and leaves the restart to the next request.
        let old = hog.pid().unwrap();
        kill(old, Signal::SIGKILL).unwrap();
        let r = hog.set(2, 64, &[]).unwrap();
        assert!(r.oom_killed);
        assert!(
            r.mib == 0 || (r.mib == 2 && r.pid != Some(old.as_raw())),
            "{r:?}"
        );
        let r = hog.set(2, 64, &[]).unwrap();
        assert_eq!((r.mib, r.oom_killed), (2, false));
        let new = hog.pid().unwrap();
        assert_ne!(new, old);

        // A kill followed by `mib: 0` is reported as well.
        kill(new, Signal::SIGKILL).unwrap();
        wait_zombie(new);
        let r = hog.set(0, 64, &[]).unwrap();
        assert_eq!((r.mib, r.oom_killed), (0, true));
    }

    #[test]
    fn a_mapping_to_drop_is_unmapped_in_the_child_only() {
        // A shared mapping stands in for a GPU BO mapping.
        // SAFETY: a fresh anonymous shared mapping, unmapped below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let range = (p as usize, 4096);
        let mut hog = Hog::new();
        hog.set(1, 64, &[range]).unwrap();
        let pid = hog.pid().unwrap();
        let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        let start = format!("{:x}-", range.0);
        assert!(!maps.lines().any(|l| l.starts_with(&start)), "{maps}");
        // No descriptor but the two pipes (plus /proc's own open of maps is
        // in *our* process, not the child's).
        let fds = fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
        assert_eq!(fds, 2);
        drop(hog);
        let mine = fs::read_to_string("/proc/self/maps").unwrap();
        assert!(mine.lines().any(|l| l.starts_with(&start)));
        // SAFETY: the mapping made above, no longer used.
        unsafe { libc::munmap(p, 4096) };
    }
}
