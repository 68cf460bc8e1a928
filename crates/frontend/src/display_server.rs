//! The frontend side of the vhost-user-gpu display protocol
//! (QEMU `docs/interop/vhost-user-gpu.rst`): the backend sends scanout,
//! update and cursor messages over the socket passed with
//! `VHOST_USER_GPU_SET_SOCKET`, and asks for display info and EDID.
//!
//! [`DisplayServer`] serves one end of a socket pair on a thread, answers
//! the queries from a [`DisplayConfig`] and records everything else as
//! [`DisplayEvent`]s, keeping a per-scanout framebuffer, so tests can
//! assert what the backend showed.

use std::io::{self, IoSliceMut, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gpuswap_protocol::wire::{
    CtrlHeader, DisplayOne, Rect, RespDisplayInfo, RespEdid, MAX_SCANOUTS,
};
use gpuswap_protocol::{ctrl_type, edid};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use vhost::vhost_user::gpu_message::{
    VhostUserGpuCursorPos, VhostUserGpuCursorUpdate, VhostUserGpuDMABUFScanout,
    VhostUserGpuScanout, VhostUserGpuUpdate,
};
use vm_memory::ByteValued;

/// Request codes of the display protocol (`VhostUserGpuRequest`).
pub mod request {
    /// Backend asks for the protocol features (replied).
    pub const GET_PROTOCOL_FEATURES: u32 = 1;
    /// Backend enables protocol features.
    pub const SET_PROTOCOL_FEATURES: u32 = 2;
    /// Backend asks for the display configuration (replied).
    pub const GET_DISPLAY_INFO: u32 = 3;
    /// Cursor moved and is shown.
    pub const CURSOR_POS: u32 = 4;
    /// Cursor is hidden.
    pub const CURSOR_POS_HIDE: u32 = 5;
    /// New cursor image and position.
    pub const CURSOR_UPDATE: u32 = 6;
    /// Scanout size set (0 disables).
    pub const SCANOUT: u32 = 7;
    /// Scanout pixels for a rectangle.
    pub const UPDATE: u32 = 8;
    /// Scanout set to a dmabuf (fd attached).
    pub const DMABUF_SCANOUT: u32 = 9;
    /// Dmabuf scanout rectangle updated (replied).
    pub const DMABUF_UPDATE: u32 = 10;
    /// Backend asks for a scanout's EDID (replied).
    pub const GET_EDID: u32 = 11;
    /// DMABUF_SCANOUT plus modifier.
    pub const DMABUF_SCANOUT2: u32 = 12;
}

/// Display protocol feature bits (`VHOST_USER_GPU_PROTOCOL_F_*`).
pub mod protocol_features {
    /// The frontend answers GET_EDID.
    pub const EDID: u64 = 1 << 0;
    /// The frontend understands DMABUF_SCANOUT2.
    pub const DMABUF2: u64 = 1 << 1;
}

/// `VHOST_USER_GPU_MSG_FLAG_REPLY`.
const FLAG_REPLY: u32 = 0x4;
const HDR_SIZE: usize = 12;
/// Largest payload accepted: a 4096x4096 32-bit update plus its header.
pub const MAX_PAYLOAD: usize = 4096 * 4096 * 4 + 64;
/// Size of a cursor image (64x64, 32 bits per pixel).
pub const CURSOR_BYTES: usize = 64 * 64 * 4;

/// One scanout the display offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScanoutMode {
    /// Preferred width.
    pub width: u32,
    /// Preferred height.
    pub height: u32,
    /// Whether the display is enabled.
    pub enabled: bool,
}

/// What the display answers to the backend's queries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DisplayConfig {
    /// Scanouts, at most [`MAX_SCANOUTS`].
    pub scanouts: Vec<ScanoutMode>,
    /// Protocol features offered in reply to GET_PROTOCOL_FEATURES.
    /// The QEMU C backend exits if it negotiated `VIRTIO_GPU_F_EDID` and
    /// this lacks [`protocol_features::EDID`].
    pub protocol_features: u64,
}

impl Default for DisplayConfig {
    /// One enabled 1280x800 scanout, EDID and DMABUF2 offered (as QEMU).
    fn default() -> Self {
        DisplayConfig {
            scanouts: vec![ScanoutMode {
                width: 1280,
                height: 800,
                enabled: true,
            }],
            protocol_features: protocol_features::EDID | protocol_features::DMABUF2,
        }
    }
}

impl DisplayConfig {
    /// The `pmodes` array of a display-info response for this display.
    pub fn pmodes(&self) -> [DisplayOne; MAX_SCANOUTS] {
        let mut p = [DisplayOne::default(); MAX_SCANOUTS];
        for (d, s) in p.iter_mut().zip(&self.scanouts) {
            *d = DisplayOne {
                r: Rect {
                    x: 0,
                    y: 0,
                    width: s.width,
                    height: s.height,
                },
                enabled: u32::from(s.enabled),
                flags: 0,
            };
        }
        p
    }

    /// The EDID blob this display reports for `scanout`, if it exists.
    pub fn edid(&self, scanout: u32) -> Option<[u8; 128]> {
        let s = self.scanouts.get(scanout as usize)?;
        Some(edid::generate(s.width, s.height))
    }
}

/// A message the backend sent on the display channel. Fields carry the
/// message's payload fields under their protocol names.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum DisplayEvent {
    /// GET_PROTOCOL_FEATURES (answered).
    GetProtocolFeatures,
    /// SET_PROTOCOL_FEATURES with the features the backend enabled.
    SetProtocolFeatures(u64),
    /// GET_DISPLAY_INFO (answered).
    GetDisplayInfo,
    /// GET_EDID (answered).
    GetEdid { scanout_id: u32 },
    /// SCANOUT: a scanout was configured (width 0 disables it).
    Scanout {
        scanout_id: u32,
        width: u32,
        height: u32,
    },
    /// UPDATE: pixels of a rectangle (`width * 4` bytes per row).
    Update {
        scanout_id: u32,
        x: u32,
        y: u32,
        width: u32,
        height: u32,
        data: Vec<u8>,
    },
    /// CURSOR_POS: the cursor moved and is visible.
    CursorPos { scanout_id: u32, x: u32, y: u32 },
    /// CURSOR_POS_HIDE: the cursor is hidden.
    CursorPosHide { scanout_id: u32, x: u32, y: u32 },
    /// CURSOR_UPDATE: a new 64x64 cursor image.
    CursorUpdate {
        scanout_id: u32,
        x: u32,
        y: u32,
        hot_x: u32,
        hot_y: u32,
        data: Vec<u8>,
    },
    /// DMABUF_SCANOUT or DMABUF_SCANOUT2 (then with the modifier).
    DmabufScanout {
        scanout: VhostUserGpuDMABUFScanout,
        modifier: Option<u64>,
        fd: Option<SharedFd>,
    },
    /// DMABUF_UPDATE (acknowledged at once).
    DmabufUpdate {
        scanout_id: u32,
        x: u32,
        y: u32,
        width: u32,
        height: u32,
    },
    /// A request this frontend does not know, or a malformed one.
    Unknown {
        request: u32,
        flags: u32,
        payload: Vec<u8>,
    },
}

/// A file descriptor the backend passed (e.g. a dmabuf), shared between
/// copies of an event. Compares by descriptor number.
#[derive(Clone, Debug)]
pub struct SharedFd(pub Arc<OwnedFd>);

impl PartialEq for SharedFd {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_raw_fd() == other.0.as_raw_fd()
    }
}

impl Eq for SharedFd {}

/// What a scanout currently shows, assembled from SCANOUT and UPDATE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Framebuffer {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width * height * 4` bytes, rows top to bottom, as the backend sent
    /// them (for 2D resources: the resource's own format).
    pub data: Vec<u8>,
}

/// Everything recorded on the display channel.
#[derive(Debug, Default)]
pub struct DisplayState {
    /// Every message, in arrival order.
    pub events: Vec<DisplayEvent>,
    /// Current content of each scanout.
    pub framebuffers: Vec<Option<Framebuffer>>,
    /// Protocol features the backend enabled, once it did.
    pub protocol_features: Option<u64>,
    /// Protocol violations and I/O errors seen on the channel.
    pub errors: Vec<String>,
    /// Whether the channel is closed (backend gone or server stopped).
    pub closed: bool,
}

struct Shared {
    state: Mutex<DisplayState>,
    cond: Condvar,
}

/// A handle on the recorded display state; cheap to clone.
#[derive(Clone)]
pub struct DisplayHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for DisplayHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DisplayHandle").finish_non_exhaustive()
    }
}

impl DisplayHandle {
    fn lock(&self) -> MutexGuard<'_, DisplayState> {
        // A poisoned lock only means a reader panicked; the data is fine.
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the recorded state.
    pub fn with_state<T>(&self, f: impl FnOnce(&DisplayState) -> T) -> T {
        f(&self.lock())
    }

    /// A copy of every event so far.
    pub fn events(&self) -> Vec<DisplayEvent> {
        self.lock().events.clone()
    }

    /// Number of events so far (use as a mark for [`DisplayHandle::wait_for`]).
    pub fn event_count(&self) -> usize {
        self.lock().events.len()
    }

    /// Removes and returns every event so far.
    pub fn take_events(&self) -> Vec<DisplayEvent> {
        std::mem::take(&mut self.lock().events)
    }

    /// Current content of `scanout`, if it has been set.
    pub fn framebuffer(&self, scanout: u32) -> Option<Framebuffer> {
        self.lock()
            .framebuffers
            .get(scanout as usize)
            .cloned()
            .flatten()
    }

    /// Protocol features the backend enabled (None until it did).
    pub fn protocol_features(&self) -> Option<u64> {
        self.lock().protocol_features
    }

    /// Errors seen on the channel.
    pub fn errors(&self) -> Vec<String> {
        self.lock().errors.clone()
    }

    /// Whether the channel is closed.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Waits until an event at index `>= from` matches `pred` and returns
    /// it, or None after `timeout` (or once the channel closed without one).
    pub fn wait_for(
        &self,
        from: usize,
        timeout: Duration,
        mut pred: impl FnMut(&DisplayEvent) -> bool,
    ) -> Option<DisplayEvent> {
        let deadline = Instant::now() + timeout;
        let mut st = self.lock();
        let mut seen = from;
        loop {
            if let Some(e) = st.events.iter().skip(seen).find(|e| pred(e)) {
                return Some(e.clone());
            }
            seen = st.events.len().max(from);
            if st.closed {
                return None;
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            st = self
                .shared
                .cond
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits until the backend enabled its protocol features (it does so
    /// right after receiving the socket).
    pub fn wait_protocol_features(&self, timeout: Duration) -> Option<u64> {
        let deadline = Instant::now() + timeout;
        let mut st = self.lock();
        loop {
            if st.protocol_features.is_some() || st.closed {
                return st.protocol_features;
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            st = self
                .shared
                .cond
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// Serves the frontend end of a display channel on a thread.
pub struct DisplayServer {
    handle: DisplayHandle,
    sock: UnixStream,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for DisplayServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DisplayServer").finish_non_exhaustive()
    }
}

impl DisplayServer {
    /// Creates a socket pair, serves one end and returns the other, which
    /// goes to the backend.
    pub fn start(config: DisplayConfig) -> io::Result<(DisplayServer, UnixStream)> {
        let (ours, theirs) = UnixStream::pair()?;
        let server = Self::serve(ours, config)?;
        Ok((server, theirs))
    }

    /// Serves an already connected socket.
    pub fn serve(sock: UnixStream, config: DisplayConfig) -> io::Result<DisplayServer> {
        let shared = Arc::new(Shared {
            state: Mutex::new(DisplayState {
                framebuffers: vec![None; config.scanouts.len().max(1)],
                ..Default::default()
            }),
            cond: Condvar::new(),
        });
        let handle = DisplayHandle { shared };
        let thread_sock = sock.try_clone()?;
        let thread_handle = handle.clone();
        let thread = std::thread::Builder::new()
            .name("gpuswap-display".into())
            .spawn(move || serve_loop(thread_sock, config, thread_handle))?;
        Ok(DisplayServer {
            handle,
            sock,
            thread: Some(thread),
        })
    }

    /// The recorded state.
    pub fn handle(&self) -> &DisplayHandle {
        &self.handle
    }

    /// Stops serving: shuts the socket down and joins the thread.
    pub fn stop(&mut self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for DisplayServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads exactly `buf.len()` bytes, collecting any passed file descriptors.
/// Returns false on a clean end of stream before the first byte.
fn recv_exact(fd: RawFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<bool> {
    let mut done = 0;
    while done < buf.len() {
        let mut cmsg = nix::cmsg_space!([RawFd; 8]);
        let n = {
            let mut iov = [IoSliceMut::new(&mut buf[done..])];
            let msg = match recvmsg::<()>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)
            {
                Ok(m) => m,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            };
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    if let ControlMessageOwned::ScmRights(raw) = c {
                        for r in raw {
                            // SAFETY: the kernel just installed `r` in our
                            // table for this message; nothing else owns it.
                            fds.push(unsafe { OwnedFd::from_raw_fd(r) });
                        }
                    }
                }
            }
            msg.bytes
        };
        if n == 0 {
            if done == 0 {
                return Ok(false);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "short message",
            ));
        }
        done += n;
    }
    Ok(true)
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_ne_bytes(a)
}

fn read_obj<T: ByteValued + Default>(payload: &[u8]) -> Option<T> {
    let mut v = T::default();
    let n = std::mem::size_of::<T>();
    if payload.len() < n {
        return None;
    }
    v.as_mut_slice().copy_from_slice(&payload[..n]);
    Some(v)
}

fn reply(sock: &mut UnixStream, request: u32, payload: &[u8]) -> io::Result<()> {
    let mut msg = Vec::with_capacity(HDR_SIZE + payload.len());
    msg.extend_from_slice(&request.to_ne_bytes());
    msg.extend_from_slice(&FLAG_REPLY.to_ne_bytes());
    msg.extend_from_slice(&(payload.len() as u32).to_ne_bytes());
    msg.extend_from_slice(payload);
    sock.write_all(&msg)
}

fn serve_loop(mut sock: UnixStream, config: DisplayConfig, handle: DisplayHandle) {
    let result = (|| -> io::Result<()> {
        loop {
            let mut hdr = [0u8; HDR_SIZE];
            let mut fds = Vec::new();
            if !recv_exact(sock.as_raw_fd(), &mut hdr, &mut fds)? {
                return Ok(());
            }
            let (request, flags, size) =
                (u32_at(&hdr, 0), u32_at(&hdr, 4), u32_at(&hdr, 8) as usize);
            if size > MAX_PAYLOAD {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("request {request} announces a {size}-byte payload"),
                ));
            }
            let mut payload = vec![0u8; size];
            if size > 0 && !recv_exact(sock.as_raw_fd(), &mut payload, &mut fds)? {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "missing payload",
                ));
            }
            handle_message(&mut sock, &config, &handle, request, flags, payload, fds)?;
        }
    })();
    let mut st = handle.lock();
    if let Err(e) = result {
        // A shutdown from our side is not an error worth reporting.
        if e.kind() != io::ErrorKind::NotConnected {
            st.errors.push(format!("display channel: {e}"));
        }
    }
    st.closed = true;
    drop(st);
    handle.shared.cond.notify_all();
}

fn handle_message(
    sock: &mut UnixStream,
    config: &DisplayConfig,
    handle: &DisplayHandle,
    request: u32,
    flags: u32,
    payload: Vec<u8>,
    mut fds: Vec<OwnedFd>,
) -> io::Result<()> {
    use crate::display_server::request as r;
    let malformed = |payload: Vec<u8>| DisplayEvent::Unknown {
        request,
        flags,
        payload,
    };
    let mut protocol = None;
    let event = match request {
        r::GET_PROTOCOL_FEATURES => {
            reply(sock, request, &config.protocol_features.to_ne_bytes())?;
            DisplayEvent::GetProtocolFeatures
        }
        r::SET_PROTOCOL_FEATURES => match read_obj::<u64>(&payload) {
            Some(f) => {
                protocol = Some(f);
                DisplayEvent::SetProtocolFeatures(f)
            }
            None => malformed(payload),
        },
        r::GET_DISPLAY_INFO => {
            let resp = RespDisplayInfo {
                hdr: CtrlHeader {
                    type_: ctrl_type::RESP_OK_DISPLAY_INFO,
                    ..Default::default()
                },
                pmodes: config.pmodes(),
            };
            reply(sock, request, resp.as_slice())?;
            DisplayEvent::GetDisplayInfo
        }
        r::GET_EDID => {
            let scanout_id = read_obj::<u32>(&payload).unwrap_or(u32::MAX);
            let mut resp = RespEdid::default();
            match config.edid(scanout_id) {
                Some(edid) => {
                    resp.hdr.type_ = ctrl_type::RESP_OK_EDID;
                    resp.size = edid.len() as u32;
                    resp.edid[..edid.len()].copy_from_slice(&edid);
                }
                None => resp.hdr.type_ = ctrl_type::RESP_ERR_INVALID_SCANOUT_ID,
            }
            reply(sock, request, resp.as_slice())?;
            DisplayEvent::GetEdid { scanout_id }
        }
        r::SCANOUT => match read_obj::<VhostUserGpuScanout>(&payload) {
            Some(s) => DisplayEvent::Scanout {
                scanout_id: s.scanout_id,
                width: s.width,
                height: s.height,
            },
            None => malformed(payload),
        },
        r::UPDATE => match read_obj::<VhostUserGpuUpdate>(&payload) {
            Some(u) => {
                let hdr_len = std::mem::size_of::<VhostUserGpuUpdate>();
                let want = u64::from(u.width) * u64::from(u.height) * 4;
                if (payload.len() - hdr_len) as u64 != want {
                    handle.lock().errors.push(format!(
                        "UPDATE {}x{} carries {} bytes, {want} expected",
                        u.width,
                        u.height,
                        payload.len() - hdr_len
                    ));
                }
                let mut data = payload;
                data.drain(..hdr_len);
                DisplayEvent::Update {
                    scanout_id: u.scanout_id,
                    x: u.x,
                    y: u.y,
                    width: u.width,
                    height: u.height,
                    data,
                }
            }
            None => malformed(payload),
        },
        r::CURSOR_POS | r::CURSOR_POS_HIDE => match read_obj::<VhostUserGpuCursorPos>(&payload) {
            Some(p) if request == r::CURSOR_POS => DisplayEvent::CursorPos {
                scanout_id: p.scanout_id,
                x: p.x,
                y: p.y,
            },
            Some(p) => DisplayEvent::CursorPosHide {
                scanout_id: p.scanout_id,
                x: p.x,
                y: p.y,
            },
            None => malformed(payload),
        },
        r::CURSOR_UPDATE => {
            let hdr_len = std::mem::size_of::<VhostUserGpuCursorUpdate>();
            match read_obj::<VhostUserGpuCursorUpdate>(&payload) {
                Some(c) if payload.len() == hdr_len + CURSOR_BYTES => DisplayEvent::CursorUpdate {
                    scanout_id: c.pos.scanout_id,
                    x: c.pos.x,
                    y: c.pos.y,
                    hot_x: c.hot_x,
                    hot_y: c.hot_y,
                    data: payload[hdr_len..].to_vec(),
                },
                _ => malformed(payload),
            }
        }
        r::DMABUF_SCANOUT | r::DMABUF_SCANOUT2 => {
            match read_obj::<VhostUserGpuDMABUFScanout>(&payload) {
                Some(scanout) => {
                    let n = std::mem::size_of::<VhostUserGpuDMABUFScanout>();
                    let modifier = if request == r::DMABUF_SCANOUT2 {
                        read_obj::<u64>(&payload[n..])
                    } else {
                        None
                    };
                    DisplayEvent::DmabufScanout {
                        scanout,
                        modifier,
                        fd: fds.pop().map(|f| SharedFd(Arc::new(f))),
                    }
                }
                None => malformed(payload),
            }
        }
        r::DMABUF_UPDATE => {
            // The backend blocks until this is acknowledged.
            reply(sock, request, &[])?;
            match read_obj::<VhostUserGpuUpdate>(&payload) {
                Some(u) => DisplayEvent::DmabufUpdate {
                    scanout_id: u.scanout_id,
                    x: u.x,
                    y: u.y,
                    width: u.width,
                    height: u.height,
                },
                None => malformed(payload),
            }
        }
        _ => malformed(payload),
    };
    let mut st = handle.lock();
    if let Some(f) = protocol {
        st.protocol_features = Some(f);
    }
    apply_to_framebuffers(&mut st, &event);
    st.events.push(event);
    drop(st);
    handle.shared.cond.notify_all();
    Ok(())
}

fn apply_to_framebuffers(st: &mut DisplayState, event: &DisplayEvent) {
    match *event {
        DisplayEvent::Scanout {
            scanout_id,
            width,
            height,
        } => {
            let i = scanout_id as usize;
            if i >= MAX_SCANOUTS {
                st.errors.push(format!("SCANOUT for scanout {scanout_id}"));
                return;
            }
            if st.framebuffers.len() <= i {
                st.framebuffers.resize(i + 1, None);
            }
            let bytes = u64::from(width) * u64::from(height) * 4;
            st.framebuffers[i] = if width == 0 || height == 0 || bytes > MAX_PAYLOAD as u64 {
                None
            } else {
                Some(Framebuffer {
                    width,
                    height,
                    data: vec![0; bytes as usize],
                })
            };
        }
        DisplayEvent::Update {
            scanout_id,
            x,
            y,
            width,
            height,
            ref data,
        } => {
            let Some(Some(fb)) = st.framebuffers.get_mut(scanout_id as usize) else {
                st.errors
                    .push(format!("UPDATE for unconfigured scanout {scanout_id}"));
                return;
            };
            let (x, y, w, h) = (x as usize, y as usize, width as usize, height as usize);
            let (fw, fh) = (fb.width as usize, fb.height as usize);
            if x.saturating_add(w) > fw || y.saturating_add(h) > fh || data.len() < w * h * 4 {
                let msg = format!("UPDATE {w}x{h}+{x}+{y} outside {fw}x{fh} scanout {scanout_id}");
                st.errors.push(msg);
                return;
            }
            for row in 0..h {
                let src = &data[row * w * 4..(row + 1) * w * 4];
                let off = ((y + row) * fw + x) * 4;
                fb.data[off..off + w * 4].copy_from_slice(src);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn send(sock: &mut UnixStream, request: u32, payload: &[u8]) {
        let mut m = Vec::new();
        m.extend_from_slice(&request.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&(payload.len() as u32).to_ne_bytes());
        m.extend_from_slice(payload);
        sock.write_all(&m).unwrap();
    }

    fn recv_reply(sock: &mut UnixStream, request: u32) -> Vec<u8> {
        let mut hdr = [0u8; 12];
        sock.read_exact(&mut hdr).unwrap();
        assert_eq!(u32_at(&hdr, 0), request);
        assert_eq!(u32_at(&hdr, 4), FLAG_REPLY);
        let mut p = vec![0u8; u32_at(&hdr, 8) as usize];
        sock.read_exact(&mut p).unwrap();
        p
    }

    #[test]
    fn serves_queries_and_records_updates() {
        let (server, mut backend) = DisplayServer::start(DisplayConfig::default()).unwrap();
        let h = server.handle().clone();
        send(&mut backend, request::GET_PROTOCOL_FEATURES, &[]);
        let f = recv_reply(&mut backend, request::GET_PROTOCOL_FEATURES);
        assert_eq!(
            f,
            (protocol_features::EDID | protocol_features::DMABUF2).to_ne_bytes()
        );
        send(
            &mut backend,
            request::SET_PROTOCOL_FEATURES,
            &1u64.to_ne_bytes(),
        );
        assert_eq!(h.wait_protocol_features(Duration::from_secs(5)), Some(1));

        send(&mut backend, request::GET_DISPLAY_INFO, &[]);
        let info = recv_reply(&mut backend, request::GET_DISPLAY_INFO);
        let mut di = RespDisplayInfo::default();
        di.as_mut_slice().copy_from_slice(&info);
        assert_eq!(di.hdr.type_, ctrl_type::RESP_OK_DISPLAY_INFO);
        assert_eq!(
            (
                di.pmodes[0].r.width,
                di.pmodes[0].r.height,
                di.pmodes[0].enabled
            ),
            (1280, 800, 1)
        );

        send(&mut backend, request::GET_EDID, &0u32.to_ne_bytes());
        assert_eq!(recv_reply(&mut backend, request::GET_EDID).len(), 1056);

        let sc = VhostUserGpuScanout {
            scanout_id: 0,
            width: 4,
            height: 2,
        };
        send(&mut backend, request::SCANOUT, sc.as_slice());
        let up = VhostUserGpuUpdate {
            scanout_id: 0,
            x: 1,
            y: 1,
            width: 2,
            height: 1,
        };
        let mut p = up.as_slice().to_vec();
        p.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        send(&mut backend, request::UPDATE, &p);
        let ev = h
            .wait_for(0, Duration::from_secs(5), |e| {
                matches!(e, DisplayEvent::Update { .. })
            })
            .unwrap();
        assert!(
            matches!(ev, DisplayEvent::Update { ref data, .. } if data == &[1, 2, 3, 4, 5, 6, 7, 8])
        );
        let fb = h.framebuffer(0).unwrap();
        assert_eq!(
            &fb.data[(4 + 1) * 4..(4 + 3) * 4],
            &[1, 2, 3, 4, 5, 6, 7, 8]
        );
        assert!(h.errors().is_empty());

        // A bogus header size closes the channel with an error, no panic.
        send(&mut backend, 99, &[]);
        let mut bad = Vec::new();
        bad.extend_from_slice(&8u32.to_ne_bytes());
        bad.extend_from_slice(&0u32.to_ne_bytes());
        bad.extend_from_slice(&u32::MAX.to_ne_bytes());
        backend.write_all(&bad).unwrap();
        assert!(h
            .wait_for(0, Duration::from_secs(5), |e| matches!(
                e,
                DisplayEvent::Unknown { request: 99, .. }
            ))
            .is_some());
        let deadline = Instant::now() + Duration::from_secs(5);
        while !h.is_closed() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(h.is_closed());
        assert_eq!(h.errors().len(), 1);
    }
}
