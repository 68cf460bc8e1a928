//! The guest agent's protocol: line-delimited JSON, one request line, one
//! reply line.
//!
//! Request:  `{"id":<u64>,"op":"<name>", ...arguments}`
//! Success:  `{"id":<same>,"ok":true, ...results}`
//! Failure:  `{"id":<same or null>,"ok":false,"error":"<message>","errno":<int or null>}`
//!
//! Each op is a struct (its arguments) that the guest receives inside
//! [`Request`] and a client sends as itself: [`AgentRequest`] ties it to
//! its reply type. Optional arguments may be omitted or null; unknown ones
//! are refused, so a typo does not fall back to a default.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A request a client can send, and what its successful reply holds.
pub trait AgentRequest {
    /// The reply's fields (besides `id` and `ok`).
    type Reply: DeserializeOwned;

    /// The request line's object: `op` and the arguments (the client adds
    /// `id`).
    fn into_object(self) -> Map<String, Value>;
}

impl Request {
    /// The request line's object (see [`AgentRequest::into_object`]).
    pub fn into_object(self) -> Map<String, Value> {
        match serde_json::to_value(self) {
            Ok(Value::Object(object)) => object,
            // An enum of structs tagged by `op` is always an object.
            _ => Map::new(),
        }
    }
}

/// Declares [`Request`] with one variant per op struct, the ops' names in
/// protocol order ([`OPS`]), and each op's [`AgentRequest`] impl.
macro_rules! requests {
    ($($(#[$attr:meta])* $op:ident => $reply:ty, $name:literal;)*) => {
        /// Every request, tagged by `op`: what the agent deserializes.
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(tag = "op", rename_all = "snake_case")]
        pub enum Request {
            $($(#[$attr])* $op($op),)*
        }

        /// The `op` names, in protocol order.
        pub const OPS: &[&str] = &[$($name,)*];

        impl Request {
            /// The `op` name.
            pub fn op(&self) -> &'static str {
                match self {
                    $(Request::$op(_) => $name,)*
                }
            }
        }

        $(
            impl From<$op> for Request {
                fn from(op: $op) -> Request {
                    Request::$op(op)
                }
            }

            impl AgentRequest for $op {
                type Reply = $reply;

                fn into_object(self) -> Map<String, Value> {
                    Request::from(self).into_object()
                }
            }
        )*
    };
}

requests! {
    Hello => GuestInfo, "hello";
    #[serde(rename = "create_2d")]
    Create2d => Created, "create_2d";
    CreateBlob => Created, "create_blob";
    CreateDumb => Created, "create_dumb";
    Write => Hashes, "write";
    TransferToHost => Transferred, "transfer_to_host";
    TransferFromHost => Done, "transfer_from_host";
    Wait => Done, "wait";
    Hash => Hashes, "hash";
    Verify => Verified, "verify";
    Info => BoInfo, "info";
    Close => Done, "close";
    List => Value, "list";
    Meminfo => Memory, "meminfo";
    Scanout => Framebuffer, "scanout";
    ScanoutOff => WasOn, "scanout_off";
    Madvise => Retained, "madvise";
    Touch => Touched, "touch";
    ShrinkerStats => ShrinkerCounters, "shrinker_stats";
    ShrinkerScan => Scanned, "shrinker_scan";
    ScanLoopStart => Done, "scan_loop_start";
    ScanLoopStop => ScanLoopTotals, "scan_loop_stop";
    Hog => HogReport, "hog";
    DropCaches => Done, "drop_caches";
    Vmstat => ReclaimCounters, "vmstat";
    Sample => GuestSample, "sample";
    TraceStart => TraceStarted, "trace_start";
    TraceRead => KernelEvents, "trace_read";
    TraceStop => WasOn, "trace_stop";
    Run => RunOutput, "run";
    Exit => Done, "exit";
}

// ---- Arguments ----------------------------------------------------------

/// Which content stream the pattern ops fill and check: every word random,
/// or one random word per page (compresses well).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pattern {
    #[default]
    Random,
    Sparse,
}

/// Scan modes of the driver's `virtio-gpu-shrink` debugfs file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScanMode {
    Purge,
    Evict,
    PurgeWait,
    EvictWait,
    /// Every mode, cheapest first (what reclaim does when it may block).
    #[default]
    All,
}

/// `madvise` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Madv {
    Willneed,
    Dontneed,
}

/// -> [`GuestInfo`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {}

/// 2D resource (RESOURCE_CREATE_2D + backing); `format` is a
/// VIRTIO_GPU_FORMAT_* value, default 2 (B8G8R8X8_UNORM).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Create2d {
    pub width: u32,
    pub height: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<u32>,
}

/// Guest-memory blob; `blob_flags` default 1 (USE_MAPPABLE).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBlob {
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob_flags: Option<u32>,
}

/// KMS dumb buffer (32 bpp).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateDumb {
    pub width: u32,
    pub height: u32,
}

/// Fill the whole BO through its mmap with the pattern of (seed, bo,
/// version) -> [`Hashes`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Write {
    pub handle: u32,
    pub seed: u64,
    pub bo: u64,
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<Pattern>,
}

/// TRANSFER_TO_HOST (default: whole resource), then WAIT, then (by default
/// when the device has no 3D) a fence barrier.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferToHost {
    pub handle: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub w: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub h: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub barrier: Option<bool>,
}

/// TRANSFER_FROM_HOST (default: whole resource), then WAIT.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferFromHost {
    pub handle: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub w: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub h: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u32>,
}

/// DRM_IOCTL_VIRTGPU_WAIT on the BO.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wait {
    pub handle: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nowait: Option<bool>,
}

/// Hash of the current mmap content -> [`Hashes`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hash {
    pub handle: u32,
}

/// Compare the mmap content with the pattern -> [`Verified`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verify {
    pub handle: u32,
    pub seed: u64,
    pub bo: u64,
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<Pattern>,
}

/// DRM_IOCTL_VIRTGPU_RESOURCE_INFO -> [`BoInfo`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Info {
    pub handle: u32,
}

/// munmap + GEM_CLOSE.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Close {
    pub handle: u32,
}

/// Every BO the agent holds -> `{bos, scanout}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct List {}

/// /proc/meminfo -> [`Memory`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meminfo {}

/// Put a BO on a CRTC (ADDFB2 as XRGB8888 + SETCRTC) -> [`Framebuffer`].
/// 2D (B8G8R8X8 / B8G8R8A8) and dumb BOs bring their own geometry and take
/// no `width`/`height`/`stride`. A guest blob (`create_blob`) has none, so
/// it needs `width` and `height`; `stride` defaults to `width * 4` and must
/// be at least that; `(height - 1) * stride + width * 4` must fit in the
/// BO. The kernel then shows the blob with SET_SCANOUT_BLOB.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scanout {
    pub handle: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stride: Option<u32>,
}

/// Turn the scanout off and remove its framebuffer -> [`WasOn`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScanoutOff {}

/// DRM_IOCTL_VIRTGPU_MADVISE (gpuswap private UAPI) -> [`Retained`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Madvise {
    pub handle: u32,
    pub madv: Madv,
}

/// Read one byte of the BO's mapping in a forked child -> [`Touched`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Touch {
    pub handle: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

/// The driver's shrinker counters (debugfs `virtio-gpu-shrinker`) ->
/// [`ShrinkerCounters`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShrinkerStats {}

/// Force a scan through debugfs `virtio-gpu-shrink` -> [`Scanned`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShrinkerScan {
    pub pages: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ScanMode>,
}

/// Start a thread forcing a scan every `interval_ms` (default 0).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScanLoopStart {
    pub pages: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ScanMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_ms: Option<u64>,
}

/// Stop it -> [`ScanLoopTotals`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScanLoopStop {}

/// Resize the memory hog to exactly `mib` MiB (0 releases it) ->
/// [`HogReport`]. The hog is anonymous, swappable memory filled with
/// half-compressible data, held by a forked child with oom_score_adj 1000.
/// More than MemTotal is refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hog {
    pub mib: u64,
}

/// sync, then write `level` (1 page cache, 2 slab, 3 both; default 3) to
/// /proc/sys/vm/drop_caches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DropCaches {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<u8>,
}

/// Reclaim counters from /proc/vmstat -> [`ReclaimCounters`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vmstat {}

/// One timeline sample in one round trip -> [`GuestSample`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sample {}

/// Stream the kernel's virtio-gpu BO tracepoints -> [`TraceStarted`].
/// Allowed on the sampler channel: it watches, the workload sees nothing
/// of it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceStart {}

/// Hand over up to `max` (default and at most 4096) events read since the
/// last call -> [`KernelEvents`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceRead {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<usize>,
}

/// Disable the tracepoints and stop reading -> [`WasOn`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceStop {}

/// Run a program -> [`RunOutput`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Run {
    pub argv: Vec<String>,
}

/// Reply, clean up, exit with `status` (default 0).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exit {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<i32>,
}

// ---- Replies ------------------------------------------------------------

/// A reply with nothing in it but `id` and `ok`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {}

/// `hello`: who answers. The reply has more (`driver`, the device's
/// parameters in full); these are the fields read on the host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestInfo {
    pub kernel: Option<String>,
    pub clocksource: Option<String>,
    pub pid: u32,
    pub version: String,
    /// The DRM card, null without a device.
    pub card: Option<String>,
    /// The virtio-gpu parameters, null without a device.
    pub device: Option<DeviceParams>,
    /// Why there is no device.
    #[serde(default)]
    pub device_error: Option<String>,
}

/// DRM_IOCTL_VIRTGPU_GETPARAM, each `None` when the query failed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceParams {
    #[serde(rename = "3d_features")]
    pub three_d_features: Option<bool>,
    pub capset_query_fix: Option<bool>,
    pub resource_blob: Option<bool>,
    pub host_visible: Option<bool>,
    pub cross_device: Option<bool>,
    pub context_init: Option<bool>,
    /// Bitmask of capset ids (VIRTGPU_PARAM_SUPPORTED_CAPSET_IDs).
    pub supported_capset_ids: Option<u64>,
}

/// `create_2d`, `create_blob`, `create_dumb`: the new BO.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Created {
    pub handle: u32,
    pub res_id: u32,
    /// GEM object size (page aligned).
    pub size: u64,
    /// Bytes per row (0 for a blob).
    pub stride: u32,
    /// Bytes of content: stride * height (2D, dumb), the size (blob).
    pub content_size: u64,
}

/// `write`, `hash`: xxh3-64 of the content (`hash`) and of the whole
/// mapping (`hash_full`), 16 hex digits each, as the daemon prints its
/// `host_hash` and `backing_hash`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hashes {
    pub hash: String,
    pub hash_full: String,
}

/// `transfer_to_host`: the resource the fence barrier used, if one was.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transferred {
    pub barrier_res_id: Option<u32>,
}

/// `verify`: whether the mapping holds the pattern, and where it first
/// does not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verified {
    pub ok_content: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_bad_offset: Option<u64>,
}

/// `info`: DRM_IOCTL_VIRTGPU_RESOURCE_INFO.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoInfo {
    pub res_id: u32,
    /// GEM object size in bytes (page aligned).
    pub size: u64,
    /// VIRTGPU_BLOB_MEM_* for blobs, 0 otherwise.
    pub blob_mem: u32,
}

/// `meminfo`: /proc/meminfo, kB (or pages) by name.
pub type Memory = BTreeMap<String, u64>;

/// `scanout`: the framebuffer put on scanout.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Framebuffer {
    pub handle: u32,
    pub fb_id: u32,
    pub crtc_id: u32,
    pub connector_id: u32,
    pub mode: String,
    /// The framebuffer's geometry (XRGB8888).
    pub width: u32,
    pub height: u32,
    pub stride: u32,
}

/// `scanout_off`, `trace_stop`: whether it was on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WasOn {
    pub was_on: bool,
}

/// `madvise`: whether the BO still has its pages (false: purged).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retained {
    pub retained: bool,
}

/// `touch`: the signal the read got (null when it worked, 7 for SIGBUS).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Touched {
    pub signal: Option<i32>,
}

/// `shrinker_stats`: the driver's shrinker counters (pages, then BOs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShrinkerCounters {
    /// Resident, unpinned, WILLNEED.
    #[serde(default)]
    pub evictable_pages: u64,
    #[serde(default)]
    pub evicted_pages: u64,
    /// Unpinned DONTNEED, resident or evicted.
    #[serde(default)]
    pub purgeable_pages: u64,
    #[serde(default)]
    pub pinned_pages: u64,
    #[serde(default)]
    pub evictions: u64,
    #[serde(default)]
    pub restores: u64,
    #[serde(default)]
    pub purges: u64,
    /// ATTACH_BACKINGs the host refused (the use failed with EIO, or a
    /// blob's fault mapped the pages without the host having them).
    #[serde(default)]
    pub attach_failures: u64,
    /// The others the file has (`detaching_pages`, ...).
    #[serde(flatten)]
    pub other: BTreeMap<String, u64>,
}

/// `shrinker_scan`: what the forced scan freed and what it left.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scanned {
    pub freed: u64,
    pub remaining: u64,
}

/// `scan_loop_stop`: what the loop did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanLoopTotals {
    pub scans: u64,
    pub freed: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub ms: u64,
}

/// `hog`: what the request did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HogReport {
    /// MiB the hog holds now.
    pub mib: u64,
    /// How long the change took (fork, resize and fill), in milliseconds.
    pub ms: u64,
    /// Whether the hog child was killed by a SIGKILL the agent did not send
    /// (the OOM killer) since the previous `hog` request, including during
    /// this one. When it happened during this one, `mib` is 0.
    pub oom_killed: bool,
    /// The hog child's pid, null when there is none.
    pub pid: Option<i32>,
    /// The pid of the child the OOM killer took (with `oom_killed`), so a
    /// caller can tell its OOM report in the kernel log.
    pub killed_pid: Option<i32>,
}

/// `vmstat`: reclaim counters, null for one the kernel lacks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReclaimCounters {
    pub pswpin: Option<u64>,
    pub pswpout: Option<u64>,
    pub pgscan_kswapd: Option<u64>,
    pub pgscan_direct: Option<u64>,
    pub pgsteal_kswapd: Option<u64>,
    pub pgsteal_direct: Option<u64>,
    pub oom_kill: Option<u64>,
}

/// `sample`: `meminfo`, `shrinker_stats` (null without the driver's
/// debugfs) and `vmstat` in one round trip.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestSample {
    pub meminfo: Memory,
    pub shrinker: Option<ShrinkerCounters>,
    pub vmstat: ReclaimCounters,
}

/// `trace_start`: the tracepoints streamed, and the guest's
/// CLOCK_MONOTONIC (ns) as it answered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceStarted {
    pub events: Vec<String>,
    pub mono_ns: u64,
}

/// One tracepoint hit, as the guest read it from `trace_pipe`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KernelEvent {
    /// The `mono` trace clock (CLOCK_MONOTONIC), in nanoseconds.
    pub t_ns: u64,
    pub cpu: u32,
    /// The event's name, e.g. `virtio_gpu_bo_evict`.
    pub name: String,
    /// Its `key=value` fields; numbers as numbers.
    pub args: Map<String, Value>,
}

/// `trace_read`: the events read since the last call.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KernelEvents {
    pub events: Vec<KernelEvent>,
    /// Events still held after this drain (ask again).
    pub pending: usize,
    /// Events dropped (the guest's buffer was full) and lines that did not
    /// parse, since the start.
    pub dropped: u64,
    pub unparsed: u64,
    /// Events the kernel's ring overwrote unread, since the start.
    pub kernel_overrun: u64,
    /// The reader's error, if it stopped on one.
    #[serde(default)]
    pub reader_error: Option<String>,
    /// CLOCK_MONOTONIC as the reply was made (the clock of `t_ns`), so the
    /// host can align the events with its own clock.
    pub mono_ns: u64,
}

/// `run`: how the program ended and its output (each cut to its last
/// 16 KiB).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunOutput {
    pub status: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_serialize_with_their_op_and_only_the_arguments_given() {
        let create = Create2d {
            width: 64,
            height: 32,
            format: None,
        };
        assert_eq!(
            Value::Object(create.into_object()),
            serde_json::json!({"op": "create_2d", "width": 64, "height": 32})
        );
        let write = Write {
            handle: 3,
            seed: 1,
            bo: 2,
            version: 4,
            pattern: Some(Pattern::Sparse),
        };
        assert_eq!(
            Value::Object(write.into_object()),
            serde_json::json!({"op": "write", "handle": 3, "seed": 1, "bo": 2, "version": 4,
                "pattern": "sparse"})
        );
        assert_eq!(
            Value::Object(ScanoutOff {}.into_object()),
            serde_json::json!({"op": "scanout_off"})
        );
    }

    #[test]
    fn every_op_round_trips_under_its_name() {
        let ops: Vec<Request> = vec![
            Hello {}.into(),
            Create2d::default().into(),
            CreateBlob::default().into(),
            CreateDumb::default().into(),
            Write::default().into(),
            TransferToHost::default().into(),
            TransferFromHost::default().into(),
            Wait::default().into(),
            Hash::default().into(),
            Verify::default().into(),
            Info::default().into(),
            Close::default().into(),
            List {}.into(),
            Meminfo {}.into(),
            Scanout::default().into(),
            ScanoutOff {}.into(),
            Madvise {
                handle: 1,
                madv: Madv::Dontneed,
            }
            .into(),
            Touch::default().into(),
            ShrinkerStats {}.into(),
            ShrinkerScan::default().into(),
            ScanLoopStart::default().into(),
            ScanLoopStop {}.into(),
            Hog::default().into(),
            DropCaches::default().into(),
            Vmstat {}.into(),
            Sample {}.into(),
            TraceStart {}.into(),
            TraceRead::default().into(),
            TraceStop {}.into(),
            Run::default().into(),
            Exit::default().into(),
        ];
        assert_eq!(ops.len(), OPS.len());
        for (op, name) in ops.into_iter().zip(OPS) {
            assert_eq!(op.op(), *name);
            let object = op.clone().into_object();
            assert_eq!(object["op"], *name);
            let back: Request = serde_json::from_value(Value::Object(object)).unwrap();
            assert_eq!(back, op);
        }
    }

    #[test]
    fn unknown_and_missing_arguments_are_refused() {
        let parse = |v: Value| serde_json::from_value::<Request>(v);
        let e = parse(serde_json::json!({"op": "hash", "handle": 1, "hadnle": 2})).unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        assert!(parse(serde_json::json!({"op": "hello", "extra": 1})).is_err());
        let e = parse(serde_json::json!({"op": "create_2d", "width": 1})).unwrap_err();
        assert!(e.to_string().contains("missing field `height`"), "{e}");
    }

    #[test]
    fn replies_read_the_fields_callers_use_and_keep_the_rest() {
        let stats: ShrinkerCounters = serde_json::from_value(serde_json::json!({
            "evictable_pages": 1, "evicted_pages": 2,
            "purgeable_pages": 3, "pinned_pages": 4, "detaching_pages": 5,
            "evictions": 6, "restores": 7, "purges": 8}))
        .unwrap();
        assert_eq!((stats.evictions, stats.restores, stats.purges), (6, 7, 8));
        assert_eq!(stats.other["detaching_pages"], 5);
    }
}
