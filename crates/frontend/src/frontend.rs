//! The vhost-user frontend: connection, feature negotiation, memory table,
//! virtqueues, display channel and request submission.

use std::collections::{HashMap, VecDeque};
use std::io::{IoSlice, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use gpuswap_protocol::features as gpu_f;
use gpuswap_protocol::wire::VirtioGpuConfig;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use vhost::vhost_user::message::{FrontendReq, VhostUserConfigFlags, VhostUserHeaderFlag};
use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VringConfigData};
use vm_memory::ByteValued;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::display_server::{DisplayConfig, DisplayHandle, DisplayServer};
use crate::error::{Error, QueueId, Result};
use crate::guest_ram::{GuestRam, PagePool, RegionSpec, PAGE_SIZE};
use crate::ring::{RawDesc, RingLayout, SplitRing};

/// `VIRTIO_F_VERSION_1`.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Guest address where the rings start (page 0 is left unused).
const RING_BASE: u64 = PAGE_SIZE;

/// How to set the frontend up.
#[derive(Clone, Debug)]
pub struct FrontendConfig {
    /// Guest RAM regions. The first (lowest) one holds the rings and the
    /// request buffers and cannot be removed.
    pub regions: Vec<RegionSpec>,
    /// `VIRTIO_GPU_F_*` bits to ask for, as a mask (`1 << bit`, bits 0 to
    /// 23); only those the backend offers are acked.
    pub gpu_features: u64,
    /// The display channel; `None` for a headless backend (no
    /// GPU_SET_SOCKET is sent).
    pub display: Option<DisplayConfig>,
    /// Control queue size (power of two).
    pub control_queue_size: u16,
    /// Cursor queue size (power of two).
    pub cursor_queue_size: u16,
    /// How long to wait for a completion, and for vhost-user replies.
    pub timeout: Duration,
    /// How long to keep retrying the connection while the backend starts.
    pub connect_timeout: Duration,
    /// Guest memory reserved for request and response buffers.
    pub bounce_bytes: u64,
    /// Use ADD_MEM_REG / REM_MEM_REG when the backend offers
    /// CONFIGURE_MEM_SLOTS (otherwise the whole table is re-sent).
    pub use_mem_slots: bool,
    /// Negotiate REPLY_ACK and ask for an ack on every request that has no
    /// reply of its own, so a backend's refusal is seen at once.
    pub reply_ack: bool,
    /// Seed for scattered page allocation.
    pub seed: u64,
}

impl Default for FrontendConfig {
    /// 256 MiB of RAM at GPA 0, every non-3D GPU feature, the default
    /// display, queues of 256 and 16 like QEMU, 5 s timeouts.
    fn default() -> Self {
        FrontendConfig {
            regions: vec![RegionSpec::new(0, 256 << 20)],
            gpu_features: (1 << gpu_f::VIRTIO_GPU_F_EDID)
                | (1 << gpu_f::VIRTIO_GPU_F_RESOURCE_UUID)
                | (1 << gpu_f::VIRTIO_GPU_F_RESOURCE_BLOB)
                | (1 << gpu_f::VIRTIO_GPU_F_CONTEXT_INIT),
            display: Some(DisplayConfig::default()),
            control_queue_size: 256,
            cursor_queue_size: 16,
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            bounce_bytes: 16 << 20,
            use_mem_slots: true,
            reply_ack: true,
            seed: 1,
        }
    }
}

impl FrontendConfig {
    /// Adds a second region of `size` bytes at 4 GiB, so backings can span
    /// two memory regions.
    pub fn with_high_region(mut self, size: u64) -> Self {
        self.regions.push(RegionSpec::new(1 << 32, size));
        self
    }

    /// Without a display channel (headless backend).
    pub fn headless(mut self) -> Self {
        self.display = None;
        self
    }
}

/// What the handshake settled on.
#[derive(Clone, Debug)]
pub struct Negotiated {
    /// Features the backend offered (GET_FEATURES).
    pub device_features: u64,
    /// Features acked (SET_FEATURES).
    pub acked_features: u64,
    /// Protocol features the backend offered, if it speaks them.
    pub protocol_offered: Option<VhostUserProtocolFeatures>,
    /// Protocol features acked.
    pub protocol_acked: VhostUserProtocolFeatures,
    /// GET_QUEUE_NUM, if MQ was negotiated.
    pub queue_num: Option<u64>,
    /// GET_MAX_MEM_SLOTS, if CONFIGURE_MEM_SLOTS was negotiated.
    pub max_mem_slots: Option<u64>,
}

impl Negotiated {
    /// Whether `VIRTIO_GPU_F_<bit>` was negotiated.
    pub fn has_gpu_feature(&self, bit: u32) -> bool {
        bit < 64 && self.acked_features & (1 << bit) != 0
    }

    /// Whether a protocol feature was negotiated.
    pub fn has_protocol(&self, f: VhostUserProtocolFeatures) -> bool {
        self.protocol_acked.contains(f)
    }
}

/// Identifies one submitted chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Token(pub u64);

/// One completed chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The chain.
    pub token: Token,
    /// The length the backend put in the used ring.
    pub used_len: u32,
    /// The response buffer's first `min(used_len, capacity)` bytes (empty
    /// for raw chains).
    pub response: Vec<u8>,
}

struct Slot {
    token: Token,
    /// Bounce pages: first address and count.
    bounce: Option<(u64, u64)>,
    /// Response buffer address and capacity.
    response: Option<(u64, usize)>,
}

struct VirtQueue {
    ring: SplitRing,
    call: EventFd,
    kick: EventFd,
    slots: HashMap<u16, Slot>,
    ready: VecDeque<Completion>,
    next_token: u64,
}

impl VirtQueue {
    fn new(layout: RingLayout) -> Result<Self> {
        Ok(VirtQueue {
            ring: SplitRing::new(layout)?,
            call: EventFd::new(EFD_NONBLOCK).map_err(Error::io("eventfd"))?,
            kick: EventFd::new(EFD_NONBLOCK).map_err(Error::io("eventfd"))?,
            slots: HashMap::new(),
            ready: VecDeque::new(),
            next_token: 0,
        })
    }
}

/// An in-process vhost-user frontend for virtio-gpu: the role QEMU plays.
///
/// It owns guest RAM (memfd regions), two split virtqueues (control and
/// cursor) and optionally the display channel. Dropping it disconnects.
pub struct GpuFrontend {
    vu: Frontend,
    /// A dup of the vhost-user socket, for GPU_SET_SOCKET and shutdown.
    sock: UnixStream,
    ram: GuestRam,
    bounce: PagePool,
    queues: [VirtQueue; 2],
    display: Option<DisplayServer>,
    negotiated: Negotiated,
    gpu_config: Option<VirtioGpuConfig>,
    config: FrontendConfig,
    running: bool,
}

impl std::fmt::Debug for GpuFrontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuFrontend")
            .field("negotiated", &self.negotiated)
            .field("ram", &self.ram)
            .field("running", &self.running)
            .finish_non_exhaustive()
    }
}

impl GpuFrontend {
    /// Connects to the backend listening on `path` (retrying while it
    /// starts up) and sets everything up: features, config, memory table,
    /// display channel, rings.
    pub fn connect(path: impl AsRef<Path>, config: FrontendConfig) -> Result<Self> {
        let path = path.as_ref();
        let deadline = Instant::now() + config.connect_timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                    ) && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(source) => {
                    return Err(Error::Connect {
                        path: path.display().to_string(),
                        source,
                    })
                }
            }
        };
        Self::from_stream(stream, config)
    }

    /// Sets up over an already connected socket.
    pub fn from_stream(stream: UnixStream, config: FrontendConfig) -> Result<Self> {
        stream
            .set_read_timeout(Some(config.timeout))
            .map_err(Error::io("socket timeout"))?;
        let sock = stream.try_clone().map_err(Error::io("dup socket"))?;
        let vu = Frontend::from_stream(stream, 2);

        let mut ram = GuestRam::new(&config.regions)?;
        ram.seed(config.seed);
        let base = ram.regions()[0];
        let (ctrl_layout, ctrl_len) =
            RingLayout::at(base.gpa + RING_BASE, config.control_queue_size);
        let cursor_at = (ctrl_layout.desc + ctrl_len).next_multiple_of(PAGE_SIZE);
        let (cursor_layout, cursor_len) = RingLayout::at(cursor_at, config.cursor_queue_size);
        let rings_end = (cursor_at + cursor_len).next_multiple_of(PAGE_SIZE);
        let bounce_pages = config.bounce_bytes.div_ceil(PAGE_SIZE);
        if rings_end + bounce_pages * PAGE_SIZE > base.end() {
            return Err(Error::Region(format!(
                "first region {base:?} is too small for the rings and {} bounce bytes",
                config.bounce_bytes
            )));
        }
        ram.reserve(base.gpa, (rings_end - base.gpa) / PAGE_SIZE + bounce_pages)?;
        let bounce = PagePool::new(rings_end, bounce_pages);
        let queues = [VirtQueue::new(ctrl_layout)?, VirtQueue::new(cursor_layout)?];

        let mut fe = GpuFrontend {
            vu,
            sock,
            ram,
            bounce,
            queues,
            display: None,
            negotiated: Negotiated {
                device_features: 0,
                acked_features: 0,
                protocol_offered: None,
                protocol_acked: VhostUserProtocolFeatures::empty(),
                queue_num: None,
                max_mem_slots: None,
            },
            gpu_config: None,
            config,
            running: false,
        };
        fe.handshake()?;
        fe.send_mem_table()?;
        if let Some(dc) = fe.config.display.clone() {
            fe.attach_display(dc)?;
        }
        fe.start()?;
        Ok(fe)
    }

    fn handshake(&mut self) -> Result<()> {
        self.vu.set_owner().map_err(Error::vu("SET_OWNER"))?;
        let offered = self.vu.get_features().map_err(Error::vu("GET_FEATURES"))?;
        self.negotiated.device_features = offered;
        if offered & VIRTIO_F_VERSION_1 == 0 {
            return Err(Error::Unsupported("VIRTIO_F_VERSION_1"));
        }
        let proto_bit = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        // Device-specific feature bits are 0..=23.
        let gpu_mask = self.config.gpu_features & 0x00ff_ffff;
        let mut acked = VIRTIO_F_VERSION_1 | (offered & gpu_mask);
        if offered & proto_bit != 0 {
            acked |= proto_bit;
            let pf = self
                .vu
                .get_protocol_features()
                .map_err(Error::vu("GET_PROTOCOL_FEATURES"))?;
            self.negotiated.protocol_offered = Some(pf);
            let mut want = VhostUserProtocolFeatures::CONFIG
                | VhostUserProtocolFeatures::MQ
                | VhostUserProtocolFeatures::RESET_DEVICE;
            if self.config.reply_ack {
                want |= VhostUserProtocolFeatures::REPLY_ACK;
            }
            if self.config.use_mem_slots {
                want |= VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS;
            }
            let ack = pf & want;
            self.vu
                .set_protocol_features(ack)
                .map_err(Error::vu("SET_PROTOCOL_FEATURES"))?;
            self.negotiated.protocol_acked = ack;
            if ack.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                self.vu.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
            if ack.contains(VhostUserProtocolFeatures::MQ) {
                let n = self
                    .vu
                    .get_queue_num()
                    .map_err(Error::vu("GET_QUEUE_NUM"))?;
                self.negotiated.queue_num = Some(n);
                if n < 2 {
                    return Err(Error::Backend(format!(
                        "GET_QUEUE_NUM says {n}, virtio-gpu needs 2"
                    )));
                }
            }
            if ack.contains(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS) {
                let n = self
                    .vu
                    .get_max_mem_slots()
                    .map_err(Error::vu("GET_MAX_MEM_SLOTS"))?;
                self.negotiated.max_mem_slots = Some(n);
            }
        }
        self.vu
            .set_features(acked)
            .map_err(Error::vu("SET_FEATURES"))?;
        self.negotiated.acked_features = acked;
        log::debug!("negotiated {:x?}", self.negotiated);
        if self
            .negotiated
            .has_protocol(VhostUserProtocolFeatures::CONFIG)
        {
            self.gpu_config = Some(self.read_config()?);
        }
        Ok(())
    }

    /// Reads the device configuration space (needs the CONFIG protocol
    /// feature).
    pub fn read_config(&mut self) -> Result<VirtioGpuConfig> {
        if !self
            .negotiated
            .has_protocol(VhostUserProtocolFeatures::CONFIG)
        {
            return Err(Error::Unsupported("VHOST_USER_PROTOCOL_F_CONFIG"));
        }
        let size = std::mem::size_of::<VirtioGpuConfig>();
        let (_, data) = self
            .vu
            .get_config(
                0,
                size as u32,
                VhostUserConfigFlags::empty(),
                &vec![0u8; size],
            )
            .map_err(Error::vu("GET_CONFIG"))?;
        let mut cfg = VirtioGpuConfig::default();
        if data.len() != size {
            return Err(Error::Backend(format!(
                "GET_CONFIG returned {} bytes",
                data.len()
            )));
        }
        cfg.as_mut_slice().copy_from_slice(&data);
        Ok(cfg)
    }

    /// The configuration read during the handshake, if the backend has
    /// the CONFIG protocol feature.
    pub fn gpu_config(&self) -> Option<VirtioGpuConfig> {
        self.gpu_config
    }

    /// What the handshake negotiated.
    pub fn negotiated(&self) -> &Negotiated {
        &self.negotiated
    }

    /// The configuration this frontend was built with.
    pub fn config(&self) -> &FrontendConfig {
        &self.config
    }

    /// Changes the completion timeout (and the vhost-user reply timeout).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.config.timeout = timeout;
        if let Err(e) = self.sock.set_read_timeout(Some(timeout)) {
            log::warn!("cannot set the socket timeout: {e}");
        }
    }

    /// Guest RAM.
    pub fn ram(&self) -> &GuestRam {
        &self.ram
    }

    /// Guest RAM, for allocating and writing test buffers.
    pub fn ram_mut(&mut self) -> &mut GuestRam {
        &mut self.ram
    }

    /// The display channel's recorded state, if there is one.
    pub fn display(&self) -> Option<&DisplayHandle> {
        self.display.as_ref().map(|d| d.handle())
    }

    /// The underlying vhost-user frontend, for sending messages this type
    /// has no method for. Keeping the state consistent is then up to the
    /// caller.
    pub fn vhost(&mut self) -> &mut Frontend {
        &mut self.vu
    }

    /// Whether the rings are running.
    pub fn is_running(&self) -> bool {
        self.running
    }

    fn send_mem_table(&mut self) -> Result<()> {
        let infos = self.ram.region_infos();
        self.vu
            .set_mem_table(&infos)
            .map_err(Error::vu("SET_MEM_TABLE"))?;
        Ok(())
    }

    /// Re-sends the whole memory table (SET_MEM_TABLE).
    pub fn set_mem_table(&mut self) -> Result<()> {
        self.send_mem_table()
    }

    fn mem_slots(&self) -> bool {
        self.negotiated
            .has_protocol(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS)
    }

    /// Adds a guest RAM region and tells the backend (ADD_MEM_REG if
    /// CONFIGURE_MEM_SLOTS was negotiated, else a new SET_MEM_TABLE).
    pub fn add_region(&mut self, spec: RegionSpec) -> Result<()> {
        self.ram.add_region(spec)?;
        let res = if self.mem_slots() {
            match self.ram.region_info_at(spec.gpa) {
                Some(info) => self
                    .vu
                    .add_mem_region(&info)
                    .map(|_| ())
                    .map_err(Error::vu("ADD_MEM_REG")),
                None => Err(Error::Region(format!("{spec:?} vanished"))),
            }
        } else {
            self.send_mem_table()
        };
        if res.is_err() {
            let _ = self.ram.remove_region(spec.gpa);
        }
        res
    }

    /// Removes the region starting at `gpa`: tells the backend
    /// (REM_MEM_REG or a new SET_MEM_TABLE), then unmaps it. The first
    /// region (rings) cannot be removed.
    pub fn remove_region(&mut self, gpa: u64) -> Result<()> {
        let base = self.ram.regions()[0].gpa;
        if gpa == base {
            return Err(Error::Region("the first region holds the rings".into()));
        }
        let info = self
            .ram
            .region_info_at(gpa)
            .ok_or_else(|| Error::Region(format!("no region at {gpa:#x}")))?;
        if self.mem_slots() {
            self.vu
                .remove_mem_region(&info)
                .map_err(Error::vu("REM_MEM_REG"))?;
        } else {
            let infos: Vec<_> = self
                .ram
                .region_infos()
                .into_iter()
                .filter(|i| i.guest_phys_addr != gpa)
                .collect();
            self.vu
                .set_mem_table(&infos)
                .map_err(Error::vu("SET_MEM_TABLE"))?;
        }
        self.ram.remove_region(gpa)?;
        Ok(())
    }

    fn attach_display(&mut self, dc: DisplayConfig) -> Result<()> {
        let (server, theirs) = DisplayServer::start(dc).map_err(Error::io("display socketpair"))?;
        // Serve before sending, so the backend's first query is answered.
        self.display = Some(server);
        self.send_gpu_socket(&theirs)?;
        Ok(())
    }

    /// Sends VHOST_USER_GPU_SET_SOCKET (message 33) with `fd`, which
    /// vhost's `Frontend` has no method for: the header goes out on a dup
    /// of its socket with the descriptor as SCM_RIGHTS. With REPLY_ACK the
    /// backend's ack is read back and checked.
    pub fn send_gpu_socket(&mut self, fd: &impl AsRawFd) -> Result<()> {
        let need_reply = self
            .negotiated
            .has_protocol(VhostUserProtocolFeatures::REPLY_ACK);
        let code: u32 = FrontendReq::GPU_SET_SOCKET.into();
        let flags: u32 = 0x1
            | if need_reply {
                VhostUserHeaderFlag::NEED_REPLY.bits()
            } else {
                0
            };
        let mut hdr = [0u8; 12];
        hdr[0..4].copy_from_slice(&code.to_ne_bytes());
        hdr[4..8].copy_from_slice(&flags.to_ne_bytes());
        let fds = [fd.as_raw_fd()];
        let n = sendmsg::<()>(
            self.sock.as_raw_fd(),
            &[IoSlice::new(&hdr)],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(Error::nix("send GPU_SET_SOCKET"))?;
        if n != hdr.len() {
            return Err(Error::Backend(format!(
                "GPU_SET_SOCKET: sent {n} of 12 bytes"
            )));
        }
        if need_reply {
            let mut reply = [0u8; 20];
            self.sock
                .read_exact(&mut reply)
                .map_err(Error::io("GPU_SET_SOCKET ack"))?;
            let word =
                |i: usize| u32::from_ne_bytes([reply[i], reply[i + 1], reply[i + 2], reply[i + 3]]);
            let value = u64::from_ne_bytes(reply[12..20].try_into().unwrap_or_default());
            if word(0) != code || word(4) & VhostUserHeaderFlag::REPLY.bits() == 0 || word(8) != 8 {
                return Err(Error::Backend(format!(
                    "bad GPU_SET_SOCKET ack: request {} flags {:#x} size {}",
                    word(0),
                    word(4),
                    word(8)
                )));
            }
            if value != 0 {
                return Err(Error::Display(format!(
                    "backend refused GPU_SET_SOCKET ({value})"
                )));
            }
        }
        Ok(())
    }

    /// Replaces the display channel with a fresh one (a new GPU_SET_SOCKET).
    /// Note: QEMU's C backend ignores a second socket while it holds one.
    pub fn reattach_display(&mut self, config: DisplayConfig) -> Result<()> {
        if let Some(mut d) = self.display.take() {
            d.stop();
        }
        self.attach_display(config)
    }

    /// Sets up both rings (NUM, BASE, ADDR, CALL, KICK, ENABLE) from index 0.
    pub fn start(&mut self) -> Result<()> {
        if self.running {
            return Ok(());
        }
        let proto =
            self.negotiated.acked_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0;
        for i in 0..2 {
            self.abandon(i);
            let q = &mut self.queues[i];
            q.ring.init(self.ram.memory())?;
            let l = q.ring.layout();
            let cfg = VringConfigData {
                queue_max_size: l.size,
                queue_size: l.size,
                flags: 0,
                desc_table_addr: self.ram.host_address(l.desc)?,
                used_ring_addr: self.ram.host_address(l.used)?,
                avail_ring_addr: self.ram.host_address(l.avail)?,
                log_addr: None,
            };
            // Drain stale notifications.
            let _ = q.call.read();
            self.vu
                .set_vring_num(i, l.size)
                .map_err(Error::vu("SET_VRING_NUM"))?;
            self.vu
                .set_vring_base(i, 0)
                .map_err(Error::vu("SET_VRING_BASE"))?;
            self.vu
                .set_vring_addr(i, &cfg)
                .map_err(Error::vu("SET_VRING_ADDR"))?;
            self.vu
                .set_vring_call(i, &q.call)
                .map_err(Error::vu("SET_VRING_CALL"))?;
            self.vu
                .set_vring_kick(i, &q.kick)
                .map_err(Error::vu("SET_VRING_KICK"))?;
            if proto {
                self.vu
                    .set_vring_enable(i, true)
                    .map_err(Error::vu("SET_VRING_ENABLE"))?;
            }
        }
        self.running = true;
        Ok(())
    }

    /// Stops both rings (SET_VRING_ENABLE 0 where supported, then
    /// GET_VRING_BASE) and returns the bases the backend reported. Chains
    /// still in flight are abandoned.
    pub fn stop(&mut self) -> Result<[u32; 2]> {
        let proto =
            self.negotiated.acked_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0;
        let mut bases = [0; 2];
        for (i, base) in bases.iter_mut().enumerate() {
            if proto {
                self.vu
                    .set_vring_enable(i, false)
                    .map_err(Error::vu("SET_VRING_ENABLE"))?;
            }
            *base = self
                .vu
                .get_vring_base(i)
                .map_err(Error::vu("GET_VRING_BASE"))?;
        }
        self.running = false;
        for i in 0..2 {
            self.abandon(i);
        }
        Ok(bases)
    }

    /// Stops the rings, resets the device when the backend supports
    /// RESET_DEVICE (then features and memory table are sent again), and
    /// sets the rings up afresh. The display channel is kept.
    pub fn reset(&mut self) -> Result<()> {
        self.stop()?;
        if self
            .negotiated
            .has_protocol(VhostUserProtocolFeatures::RESET_DEVICE)
        {
            self.vu.reset_device().map_err(Error::vu("RESET_DEVICE"))?;
            self.vu
                .set_features(self.negotiated.acked_features)
                .map_err(Error::vu("SET_FEATURES"))?;
            self.send_mem_table()?;
        }
        self.start()
    }

    /// Disconnects (same as dropping).
    pub fn disconnect(self) {}

    /// Forgets everything in flight on queue `i`, freeing its buffers.
    fn abandon(&mut self, i: usize) {
        let q = &mut self.queues[i];
        for (_, slot) in q.slots.drain() {
            if let Some((gpa, n)) = slot.bounce {
                for p in 0..n {
                    self.bounce.free_page(gpa + p * PAGE_SIZE);
                }
            }
        }
        q.ready.clear();
        q.ring.forget_all();
    }

    fn queue(&mut self, id: QueueId) -> &mut VirtQueue {
        &mut self.queues[id.index()]
    }

    /// The available index the frontend will publish next on `queue`
    /// (chains published since the rings were last started, mod 2^16).
    pub fn avail_index(&self, queue: QueueId) -> u16 {
        self.queues[queue.index()].ring.next_avail()
    }

    /// Where `queue`'s rings are in guest RAM (for tests that corrupt them).
    pub fn ring_layout(&self, queue: QueueId) -> RingLayout {
        self.queues[queue.index()].ring.layout()
    }

    /// Chains submitted on `queue` whose completion has not been returned
    /// yet (owned by the backend, or completed and not yet waited for).
    pub fn in_flight(&self, queue: QueueId) -> usize {
        let q = &self.queues[queue.index()];
        q.ring.in_flight() + q.ready.len()
    }

    fn add(
        &mut self,
        queue: QueueId,
        descs: &[RawDesc],
        bounce: Option<(u64, u64)>,
        response: Option<(u64, usize)>,
    ) -> Result<Token> {
        if !self.running {
            return Err(Error::Stopped);
        }
        let qi = queue.index();
        let free = self.queues[qi].ring.num_free();
        if descs.len() > free {
            return Err(Error::RingFull {
                queue,
                needed: descs.len(),
                free,
            });
        }
        let head = self.queues[qi].ring.add_chain(self.ram.memory(), descs)?;
        let q = &mut self.queues[qi];
        let token = Token(q.next_token);
        q.next_token += 1;
        q.slots.insert(
            head,
            Slot {
                token,
                bounce,
                response,
            },
        );
        Ok(token)
    }

    /// Queues a request without notifying the backend: the request bytes
    /// go in a device-readable buffer, followed by a zeroed device-writable
    /// buffer of `response_capacity` bytes (none if 0).
    pub fn enqueue(
        &mut self,
        queue: QueueId,
        request: &[u8],
        response_capacity: usize,
    ) -> Result<Token> {
        if request.is_empty() && response_capacity == 0 {
            return Err(Error::InvalidChain("empty request and no response buffer"));
        }
        if u32::try_from(request.len()).is_err() || u32::try_from(response_capacity).is_err() {
            return Err(Error::InvalidChain(
                "buffer longer than a descriptor can describe",
            ));
        }
        let req_len = (request.len() as u64).next_multiple_of(64);
        let total = req_len + response_capacity as u64;
        let pages = total.div_ceil(PAGE_SIZE).max(1);
        let gpa = self
            .bounce
            .alloc_contiguous(pages)
            .ok_or(Error::OutOfPages {
                wanted: pages,
                free: self.bounce.free_pages(),
                placement: "bounce buffer",
            })?;
        let free_bounce = |bounce: &mut PagePool| {
            for p in 0..pages {
                bounce.free_page(gpa + p * PAGE_SIZE);
            }
        };
        let resp_gpa = gpa + req_len;
        let write = self
            .ram
            .write(gpa, request)
            .and_then(|_| self.ram.fill(resp_gpa, response_capacity, 0));
        if let Err(e) = write {
            free_bounce(&mut self.bounce);
            return Err(e);
        }
        let mut descs = Vec::with_capacity(2);
        if !request.is_empty() {
            descs.push(RawDesc::readable(gpa, request.len() as u32));
        }
        if response_capacity > 0 {
            descs.push(RawDesc::writable(resp_gpa, response_capacity as u32));
        }
        let response = (response_capacity > 0).then_some((resp_gpa, response_capacity));
        match self.add(queue, &descs, Some((gpa, pages)), response) {
            Ok(t) => Ok(t),
            Err(e) => {
                free_bounce(&mut self.bounce);
                Err(e)
            }
        }
    }

    /// Queues a chain built from explicit descriptors (any addresses,
    /// lengths and directions) without notifying the backend.
    pub fn enqueue_raw(&mut self, queue: QueueId, chain: &[RawDesc]) -> Result<Token> {
        self.add(queue, chain, None, None)
    }

    /// Notifies the backend that `queue` has new chains.
    pub fn kick(&mut self, queue: QueueId) -> Result<()> {
        self.queue(queue).kick.write(1).map_err(Error::io("kick"))
    }

    /// Queues a request and notifies the backend.
    pub fn submit_async(
        &mut self,
        queue: QueueId,
        request: &[u8],
        response_capacity: usize,
    ) -> Result<Token> {
        let t = self.enqueue(queue, request, response_capacity)?;
        self.kick(queue)?;
        Ok(t)
    }

    /// Submits a request and waits for its completion; returns the
    /// response bytes the backend reported (`used_len`, capped at
    /// `response_capacity`).
    pub fn submit(
        &mut self,
        queue: QueueId,
        request: &[u8],
        response_capacity: usize,
    ) -> Result<Vec<u8>> {
        let t = self.submit_async(queue, request, response_capacity)?;
        Ok(self.wait_for(queue, t)?.response)
    }

    /// Submits an explicit chain and waits; returns the used length.
    pub fn submit_raw(&mut self, queue: QueueId, chain: &[RawDesc]) -> Result<u32> {
        let t = self.enqueue_raw(queue, chain)?;
        self.kick(queue)?;
        Ok(self.wait_for(queue, t)?.used_len)
    }

    /// Queues all `requests`, notifies once, and collects all completions;
    /// returned in submission order.
    pub fn submit_pipelined<'r>(
        &mut self,
        queue: QueueId,
        requests: impl IntoIterator<Item = &'r [u8]>,
        response_capacity: usize,
    ) -> Result<Vec<Completion>> {
        let mut tokens = Vec::new();
        for r in requests {
            match self.enqueue(queue, r, response_capacity) {
                Ok(t) => tokens.push(t),
                Err(e) => {
                    // Let the backend have what is queued so the ring drains.
                    if !tokens.is_empty() {
                        let _ = self.kick(queue);
                    }
                    return Err(e);
                }
            }
        }
        self.kick(queue)?;
        let mut out = Vec::with_capacity(tokens.len());
        for t in tokens {
            out.push(self.wait_for(queue, t)?);
        }
        Ok(out)
    }

    /// Moves every used-ring entry of `queue` into its ready list.
    fn collect(&mut self, qi: usize) -> Result<()> {
        loop {
            let used = self.queues[qi].ring.pop_used(self.ram.memory())?;
            let Some(used) = used else { return Ok(()) };
            let q = &mut self.queues[qi];
            let Some(slot) = q.slots.remove(&used.head) else {
                return Err(Error::Backend(format!(
                    "completion for unknown head {}",
                    used.head
                )));
            };
            let mut response = Vec::new();
            if let Some((gpa, cap)) = slot.response {
                let n = (used.len as usize).min(cap);
                response = vec![0u8; n];
                self.ram.read(gpa, &mut response)?;
            }
            if let Some((gpa, n)) = slot.bounce {
                for p in 0..n {
                    self.bounce.free_page(gpa + p * PAGE_SIZE);
                }
            }
            self.queues[qi].ready.push_back(Completion {
                token: slot.token,
                used_len: used.len,
                response,
            });
        }
    }

    /// Waits until the next completion of `queue` (used-ring order,
    /// including completions left over by [`GpuFrontend::wait_for`]).
    pub fn wait(&mut self, queue: QueueId) -> Result<Completion> {
        self.wait_until(queue, |_| true)
    }

    /// Waits for the completion of chain `token`; other completions that
    /// arrive meanwhile are kept for [`GpuFrontend::wait`].
    pub fn wait_for(&mut self, queue: QueueId, token: Token) -> Result<Completion> {
        self.wait_until(queue, |c| c.token == token)
    }

    /// Drops completions nobody waited for; returns how many.
    pub fn drain_completions(&mut self, queue: QueueId) -> Result<usize> {
        self.collect(queue.index())?;
        let q = self.queue(queue);
        let n = q.ready.len();
        q.ready.clear();
        Ok(n)
    }

    fn wait_until(
        &mut self,
        queue: QueueId,
        pred: impl Fn(&Completion) -> bool,
    ) -> Result<Completion> {
        let qi = queue.index();
        let timeout = self.config.timeout;
        let deadline = Instant::now() + timeout;
        loop {
            self.collect(qi)?;
            let q = &mut self.queues[qi];
            if let Some(pos) = q.ready.iter().position(&pred) {
                if let Some(c) = q.ready.remove(pos) {
                    return Ok(c);
                }
            }
            if q.ring.in_flight() == 0 {
                return Err(Error::NothingInFlight(queue));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Timeout {
                    queue,
                    waited: timeout,
                    in_flight: q.ring.in_flight(),
                });
            }
            let left = deadline - now;
            let ms = PollTimeout::try_from(left.as_millis().clamp(1, 60_000) as u64)
                .unwrap_or(PollTimeout::MAX);
            // SAFETY: `q.call` owns this descriptor and outlives `fds`.
            let call_fd = unsafe { BorrowedFd::borrow_raw(q.call.as_raw_fd()) };
            let mut fds = [
                PollFd::new(call_fd, PollFlags::POLLIN),
                // POLLHUP and POLLERR are always reported: the backend went
                // away. (Asking for POLLRDHUP would make nix drop revents.)
                PollFd::new(self.sock.as_fd(), PollFlags::empty()),
            ];
            match poll(&mut fds, ms) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(Error::nix("poll call eventfd")(e)),
            }
            let hup = PollFlags::POLLHUP | PollFlags::POLLERR;
            let gone = fds[1].revents().is_some_and(|r| r.intersects(hup));
            // Reset the counter; completions are found through the ring.
            let _ = q.call.read();
            if gone {
                // A completion may have landed just before the backend left.
                self.collect(qi)?;
                let q = &mut self.queues[qi];
                if let Some(pos) = q.ready.iter().position(&pred) {
                    if let Some(c) = q.ready.remove(pos) {
                        return Ok(c);
                    }
                }
                return Err(Error::Disconnected {
                    queue,
                    in_flight: q.ring.in_flight(),
                });
            }
        }
    }
}

impl Drop for GpuFrontend {
    fn drop(&mut self) {
        // Shutting the socket down ends the connection for every dup of it,
        // including the one inside `vu`.
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
        if let Some(mut d) = self.display.take() {
            d.stop();
        }
    }
}
