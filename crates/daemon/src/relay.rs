//! Serving a vhost-user connection the daemon inherited already connected.
//!
//! libvirt and QEMU's C backend pass `--fd=N` with N one end of a connected
//! socketpair whose other end QEMU holds. vhost-user-backend 0.24 can only
//! serve a connection it accepted on a listener or made itself with
//! `start_client(path)`, so the daemon lets it connect to a private socket
//! and relays vhost-user messages between that connection and the inherited
//! one. Only the setup messages of the main channel pass through here: the
//! vring eventfds, guest memory, the display socket and the backend request
//! channel are file descriptors that the relay hands on, after which they
//! are used directly.
//!
//! Messages are relayed one at a time, each with exactly the descriptors
//! that came with it: the backend takes the descriptors it receives with a
//! message's header as that message's, so two messages' bytes must never go
//! out in one `sendmsg` with descriptors attached to the first.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use log::{debug, warn};
use nix::sys::socket::{
    getsockopt, recvmsg, sendmsg, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
    UnixCredentials,
};
use vhost::vhost_user::message::{MAX_ATTACHED_FD_ENTRIES, MAX_MSG_SIZE};

/// Size of a vhost-user message header: request, flags, payload size.
const HEADER_LEN: usize = 12;

/// A private socket for the daemon to connect to, in a directory only this
/// user can enter, removed once the one expected connection is accepted.
pub struct PrivateSocket {
    dir: PathBuf,
    path: PathBuf,
    listener: UnixListener,
}

impl PrivateSocket {
    pub fn new() -> io::Result<Self> {
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|d| d.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = base.join(format!("gpuswap-relay-{}-{nanos}", std::process::id()));
        // Fails if the name exists: the directory is new and ours alone.
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let path = dir.join("s");
        let listener = UnixListener::bind(&path).inspect_err(|_| {
            let _ = std::fs::remove_dir(&dir);
        })?;
        Ok(PrivateSocket {
            dir,
            path,
            listener,
        })
    }

    /// Where the daemon connects.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts the daemon's own connection, which is already queued.
    /// Anything else that got in first (only this user can reach the
    /// directory) is turned away, a few times at most.
    pub fn accept_own(self) -> io::Result<UnixStream> {
        const TURNED_AWAY: usize = 4;
        let me = nix::unistd::getpid().as_raw();
        for _ in 0..=TURNED_AWAY {
            let (stream, _) = self.listener.accept()?;
            let peer: UnixCredentials = getsockopt(&stream, sockopt::PeerCredentials)?;
            if peer.pid() == me {
                return Ok(stream);
            }
            warn!(
                "relay socket: turned away a connection from pid {}",
                peer.pid()
            );
        }
        Err(io::Error::other(format!(
            "{TURNED_AWAY} other processes connected to the private relay socket first"
        )))
    }
}

impl Drop for PrivateSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Relays messages both ways between `frontend` (the inherited connection)
/// and `backend` (the daemon's connection) until either side closes or
/// sends something that is not a vhost-user message; then shuts both down,
/// so the daemon sees the frontend go away.
pub fn spawn(frontend: UnixStream, backend: UnixStream) -> io::Result<[JoinHandle<()>; 2]> {
    let to_backend = one_way(
        "frontend->backend",
        frontend.try_clone()?,
        backend.try_clone()?,
    )?;
    let to_frontend = one_way("backend->frontend", backend, frontend)?;
    Ok([to_backend, to_frontend])
}

fn one_way(name: &'static str, from: UnixStream, to: UnixStream) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("relay {name}"))
        .spawn(move || {
            match relay(&from, &to) {
                Ok(()) => debug!("relay {name}: closed"),
                Err(e) => warn!("relay {name}: {e}"),
            }
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
        })
}

/// Copies whole messages from `from` to `to`; Ok on a clean end of stream
/// between messages.
fn relay(from: &UnixStream, to: &UnixStream) -> io::Result<()> {
    let mut buf = vec![0u8; HEADER_LEN + MAX_MSG_SIZE];
    loop {
        let mut fds = Vec::new();
        if !read_full(from, &mut buf[..HEADER_LEN], &mut fds, true)? {
            return Ok(());
        }
        let size = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]) as usize;
        if size > MAX_MSG_SIZE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("message payload of {size} bytes (at most {MAX_MSG_SIZE})"),
            ));
        }
        let end = HEADER_LEN + size;
        read_full(from, &mut buf[HEADER_LEN..end], &mut fds, false)?;
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let cmsgs = [ControlMessage::ScmRights(&raw)];
        let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &cmsgs };
        let mut sent = 0;
        while sent < end {
            // Descriptors go with the first bytes only.
            let with = if sent == 0 { cmsgs } else { &[] };
            let n = sendmsg::<()>(
                to.as_raw_fd(),
                &[IoSlice::new(&buf[sent..end])],
                with,
                MsgFlags::MSG_NOSIGNAL,
                None,
            )?;
            sent += n;
        }
        // `fds` drops here: the receiver has its own copies now.
    }
}

/// Fills `buf` from `from`, collecting any descriptors that arrive.
/// Returns false on end of stream before the first byte if `eof_ok`.
fn read_full(
    from: &UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    eof_ok: bool,
) -> io::Result<bool> {
    let mut got = 0;
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_ATTACHED_FD_ENTRIES]);
    while got < buf.len() {
        let mut iov = [IoSliceMut::new(&mut buf[got..])];
        let msg = match recvmsg::<()>(
            from.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => msg,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        let n = msg.bytes;
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(received) = c {
                for fd in received {
                    // SAFETY: SCM_RIGHTS just installed `fd` in this
                    // process for us; nothing else owns it.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        if msg.flags.contains(MsgFlags::MSG_CTRUNC) || fds.len() > MAX_ATTACHED_FD_ENTRIES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("more than {MAX_ATTACHED_FD_ENTRIES} descriptors with one message"),
            ));
        }
        if n == 0 {
            if got == 0 && eof_ok {
                return Ok(false);
            }
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        got += n;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    /// Reads until the stream ends.
    fn drain(mut s: &UnixStream) -> Vec<u8> {
        let mut v = Vec::new();
        let _ = s.read_to_end(&mut v);
        v
    }

    fn header(request: u32, size: u32) -> Vec<u8> {
        let mut h = request.to_le_bytes().to_vec();
        h.extend_from_slice(&1u32.to_le_bytes());
        h.extend_from_slice(&size.to_le_bytes());
        h
    }

    /// Two messages sent back to back, the second with a descriptor:
    /// they come out as two messages, the descriptor with the second.
    #[test]
    fn descriptors_stay_with_their_message() {
        let (qemu, relay_front) = UnixStream::pair().unwrap();
        let (relay_back, daemon) = UnixStream::pair().unwrap();
        let handles = spawn(relay_front, relay_back).unwrap();

        let first = [header(1, 4), vec![1, 2, 3, 4]].concat();
        let second = [header(5, 8), vec![9; 8]].concat();
        let (probe, _keep) = UnixStream::pair().unwrap();
        (&qemu).write_all(&first).unwrap();
        let raw = [probe.as_fd().as_raw_fd()];
        sendmsg::<()>(
            qemu.as_raw_fd(),
            &[IoSlice::new(&second)],
            &[ControlMessage::ScmRights(&raw)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();

        let mut fds = Vec::new();
        let mut got = vec![0u8; first.len()];
        assert!(read_full(&daemon, &mut got[..HEADER_LEN], &mut fds, false).unwrap());
        assert!(fds.is_empty(), "the first message came with a descriptor");
        read_full(&daemon, &mut got[HEADER_LEN..], &mut fds, false).unwrap();
        assert_eq!(got, first);
        let mut got = vec![0u8; second.len()];
        read_full(&daemon, &mut got[..HEADER_LEN], &mut fds, false).unwrap();
        assert_eq!(fds.len(), 1, "the second message's descriptor is missing");
        read_full(&daemon, &mut got[HEADER_LEN..], &mut fds, false).unwrap();
        assert_eq!(got, second);

        // Replies go the other way.
        (&daemon).write_all(&header(1, 0)).unwrap();
        let mut reply = [0u8; HEADER_LEN];
        (&qemu).read_exact(&mut reply).unwrap();
        assert_eq!(reply.to_vec(), header(1, 0));

        // The frontend going away ends both directions.
        drop(qemu);
        assert!(drain(&daemon).is_empty());
        for h in handles {
            h.join().unwrap();
        }
    }

    /// A payload size past the protocol's limit ends the relay instead of
    /// buffering it.
    #[test]
    fn oversized_message_ends_the_relay() {
        let (qemu, relay_front) = UnixStream::pair().unwrap();
        let (relay_back, daemon) = UnixStream::pair().unwrap();
        let handles = spawn(relay_front, relay_back).unwrap();
        (&qemu).write_all(&header(5, u32::MAX)).unwrap();
        assert!(drain(&daemon).is_empty());
        for h in handles {
            h.join().unwrap();
        }
    }
}
