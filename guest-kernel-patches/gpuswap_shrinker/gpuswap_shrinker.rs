// SPDX-License-Identifier: GPL-2.0

//! gpuswap shrinker.
//!
//! Gives idle virtio-gpu buffer objects back to the kernel under memory
//! pressure (see DESIGN.md, "Guest: eviction protocol"). The virtio-gpu
//! driver (patched, see `../series`) owns everything that touches a buffer
//! object and exports a small interface, `<drm/virtgpu_shrinker.h>`: a
//! lockless count and a scan in one of four modes. This module owns the
//! shrinker and the policy:
//!
//! 1. purge idle buffers userspace marked DONTNEED (their content is lost,
//!    which userspace agreed to);
//! 2. evict idle buffers, but only when there is swap: without it the pages
//!    would just move from the driver to shmem and stay in memory;
//! 3. and 4. the same, then wait a few milliseconds for the host to finish
//!    the DETACHes queued, so their pages can go in this scan.
//!
//! Every mode may sleep briefly (it queues commands), so none runs when the
//! allocation that got us here may not block. The driver never makes one
//! reclaimer wait behind another's scan: a scan already running makes the
//! next one return at once.
//!
//! Unloading is safe at any time: `shrinker_free()` waits for running
//! callbacks, and the driver keeps no reference to this module. Buffers
//! evicted before the unload come back on their next use as usual.

use core::sync::atomic::{AtomicI64, Ordering};

use kernel::bindings;
use kernel::c_str;
use kernel::ffi::c_ulong;
use kernel::prelude::*;

module! {
    type: GpuswapShrinker,
    name: "gpuswap_shrinker",
    author: "gpuswap developers",
    description: "Shrinker that evicts idle virtio-gpu buffer objects",
    license: "GPL",
}

/// The driver's interface (`include/drm/virtgpu_shrinker.h` in the patched
/// tree, in the kernel's bindings since patch 0013), wrapped in safe
/// functions. The modes, the count and both calls are the generated ones,
/// so a change on the C side fails this module's build.
mod virtio_gpu {
    use kernel::bindings;
    use kernel::ffi::c_ulong;

    /// `enum virtio_gpu_shrink_mode`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    #[repr(u32)]
    pub(crate) enum Mode {
        /// Idle DONTNEED buffers: detach, unref, drop the pages.
        Purge = bindings::virtio_gpu_shrink_mode_VIRTIO_GPU_SHRINK_PURGE,
        /// Idle buffers: detach, give the pages back to shmem.
        Evict = bindings::virtio_gpu_shrink_mode_VIRTIO_GPU_SHRINK_EVICT,
        /// As `Purge`, then wait briefly for the host.
        PurgeWait = bindings::virtio_gpu_shrink_mode_VIRTIO_GPU_SHRINK_PURGE_WAIT,
        /// As `Evict`, then wait briefly for the host.
        EvictWait = bindings::virtio_gpu_shrink_mode_VIRTIO_GPU_SHRINK_EVICT_WAIT,
    }

    /// `struct virtio_gpu_shrink_count`: pages a scan could give back.
    pub(crate) type Count = bindings::virtio_gpu_shrink_count;

    /// Reads the counts of every virtio-gpu device; takes no lock.
    pub(crate) fn count() -> Count {
        let mut count = Count {
            purgeable: 0,
            evictable: 0,
        };
        // SAFETY: `count` is a valid, writable `struct virtio_gpu_shrink_count`
        // for the duration of the call; the function only fills it in.
        unsafe { bindings::virtio_gpu_shrinker_count(&mut count) };
        count
    }

    /// Scans up to `nr_to_scan` pages in `mode`; returns the pages given
    /// back. May sleep briefly.
    pub(crate) fn scan(mode: Mode, nr_to_scan: c_ulong) -> c_ulong {
        // The pages skipped because their buffer was locked: a retry could
        // get them, but the core retries anyway while we give pages back,
        // and it ignores what a SHRINK_STOP return freed, so unlike msm we
        // do not stop on them.
        let mut skipped: c_ulong = 0;
        // SAFETY: `mode` is one of the values the C enum defines, and
        // `skipped` is a valid, writable `unsigned long` for the call. The
        // function may sleep, which every caller here (shrinker scan with a
        // blocking gfp mask) allows.
        unsafe { bindings::virtio_gpu_shrinker_scan(mode as u32, nr_to_scan, &mut skipped) }
    }
}

use virtio_gpu::Mode;

/// Whether evicted pages can leave memory: free swap space exists.
fn can_swap() -> bool {
    extern "C" {
        // `atomic_long_t nr_swap_pages` in mm/swapfile.c (EXPORT_SYMBOL_GPL).
        static nr_swap_pages: bindings::atomic_long_t;
    }
    // SAFETY: `nr_swap_pages` is a kernel global that lives forever and is
    // only ever modified atomically; `atomic_long_t` is a single aligned
    // `s64` (asserted below), so reading it through an `AtomicI64` is
    // `atomic_long_read()`.
    let pages = unsafe {
        let counter = core::ptr::addr_of!(nr_swap_pages.counter);
        (*counter.cast::<AtomicI64>()).load(Ordering::Relaxed)
    };
    pages > 0
}

/// Whether the allocation that triggered reclaim may sleep for a while.
fn can_block(gfp_mask: bindings::gfp_t) -> bool {
    let direct_reclaim: bindings::gfp_t = 1 << bindings::___GFP_DIRECT_RECLAIM_BIT;
    gfp_mask & direct_reclaim != 0
}

/// The policy: the scan modes to try, cheapest first.
fn stages(can_swap: bool) -> [(Mode, bool); 4] {
    [
        (Mode::Purge, true),
        (Mode::Evict, can_swap),
        (Mode::PurgeWait, true),
        (Mode::EvictWait, can_swap),
    ]
}

/// `SHRINK_STOP` and `SHRINK_EMPTY` are `~0UL` and `~0UL - 1` in C; bindgen
/// gives them as negative `i32`s.
const SHRINK_STOP: c_ulong = bindings::SHRINK_STOP as c_ulong;
const SHRINK_EMPTY: c_ulong = bindings::SHRINK_EMPTY as c_ulong;

/// How many pages the shrinker could give back right now. Lock-free: the
/// driver only reads its LRU counters.
unsafe extern "C" fn count_objects(
    _shrinker: *mut bindings::shrinker,
    _sc: *mut bindings::shrink_control,
) -> c_ulong {
    let count = virtio_gpu::count();
    let mut pages = count.purgeable;
    if can_swap() {
        pages = pages.saturating_add(count.evictable);
    }
    match pages {
        0 => SHRINK_EMPTY,
        // Values from SHRINK_EMPTY up mean something else to the core.
        n => n.min(SHRINK_EMPTY - 1),
    }
}

/// Gives back up to `sc->nr_to_scan` pages, following [`stages`].
unsafe extern "C" fn scan_objects(
    _shrinker: *mut bindings::shrinker,
    sc: *mut bindings::shrink_control,
) -> c_ulong {
    // SAFETY: the shrinker core passes a valid `shrink_control` that nothing
    // else touches while the callback runs.
    let sc = unsafe { &*sc };
    if !can_block(sc.gfp_mask) {
        return SHRINK_STOP;
    }
    let nr_to_scan = sc.nr_to_scan;
    let mut freed: c_ulong = 0;

    for (mode, enabled) in stages(can_swap()) {
        if freed >= nr_to_scan {
            break;
        }
        if enabled {
            freed += virtio_gpu::scan(mode, nr_to_scan - freed);
        }
    }

    // Nothing given back: tell the core to stop calling us in this round.
    if freed == 0 {
        SHRINK_STOP
    } else {
        freed
    }
}

/// A registered `struct shrinker`, freed (and waited for) on drop.
struct Shrinker(core::ptr::NonNull<bindings::shrinker>);

// SAFETY: the pointer is only used to register the shrinker and to free it
// in `drop`; the shrinker core synchronizes the callbacks itself, and they
// do not use the pointer.
unsafe impl Send for Shrinker {}
// SAFETY: as above, `&Shrinker` gives no access to the pointer at all.
unsafe impl Sync for Shrinker {}

impl Shrinker {
    fn register() -> Result<Self> {
        // SAFETY: `shrinker_alloc` takes flags (none: not memcg- or
        // NUMA-aware) and a printf-style name without format directives.
        let ptr = unsafe { bindings::shrinker_alloc(0, c_str!("gpuswap-virtio-gpu").as_char_ptr()) };
        let ptr = core::ptr::NonNull::new(ptr).ok_or(ENOMEM)?;
        // SAFETY: `ptr` is a freshly allocated shrinker that nobody else
        // sees until `shrinker_register`; the callbacks are `'static`
        // functions with the C signature the core expects.
        unsafe {
            let s = ptr.as_ptr();
            (*s).count_objects = Some(count_objects);
            (*s).scan_objects = Some(scan_objects);
            // `shrinker_alloc` already set `seeks` to DEFAULT_SEEKS.
            bindings::shrinker_register(s);
        }
        Ok(Shrinker(ptr))
    }
}

impl Drop for Shrinker {
    fn drop(&mut self) {
        // SAFETY: the shrinker was allocated and registered in `register`
        // and is freed only here. `shrinker_free` unregisters it and waits
        // for callbacks in flight, so none runs after module unload.
        unsafe { bindings::shrinker_free(self.0.as_ptr()) };
    }
}

/// Module state: the registered shrinker.
struct GpuswapShrinker {
    _shrinker: Shrinker,
}

impl kernel::Module for GpuswapShrinker {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        let shrinker = Shrinker::register()?;
        let count = virtio_gpu::count();
        // `pr_info!` prefixes the module name: "gpuswap_shrinker: loaded".
        pr_info!(
            "loaded (purgeable {} evictable {} pages, swap {})\n",
            count.purgeable,
            count.evictable,
            if can_swap() { "yes" } else { "no" }
        );
        Ok(GpuswapShrinker {
            _shrinker: shrinker,
        })
    }
}

impl Drop for GpuswapShrinker {
    fn drop(&mut self) {
        pr_info!("unloaded\n");
    }
}

// `can_swap` reads `atomic_long_t` as an `AtomicI64`: a 64-bit kernel only.
const _: () = assert!(
    core::mem::size_of::<bindings::atomic_long_t>() == core::mem::size_of::<AtomicI64>()
);
