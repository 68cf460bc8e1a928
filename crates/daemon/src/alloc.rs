//! The daemon's global allocator: the system allocator, with large blocks
//! starting on a page.
//!
//! A 2D resource's host copy is one large allocation (rutabaga's
//! `vec![0; size]`), and a transfer copies guest pages, which are
//! page-aligned, into it row by row. glibc places a large block 16 bytes
//! past a page boundary (a fresh mapping, after its chunk header) or
//! anywhere in the heap. With the destination a few bytes after its
//! source modulo 4 KiB, loads wait for earlier stores to the same low 12
//! address bits (4K aliasing): a gather of scattered pages into a buffer
//! 16 bytes past a page took 12x as long as into an aligned one
//! (docs/benchmarks.md, "Transfers"). Aligning every large block makes
//! the offset the guest's, whatever the heap looks like.
//!
//! The alignment is done here, over an ordinary block a page longer, not
//! by asking glibc for an aligned block: glibc 2.36's `posix_memalign`
//! cannot reuse a freed block of exactly the size it needs (it asks for
//! the size plus the alignment, then gives back the ends), so a daemon
//! attaching and detaching a large backing grew its heap by the backing's
//! buffers on every cycle (4 MiB per 1 GiB ATTACH + DETACH, measured).

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr;

/// From this size on, a block starts on a page: glibc's default mmap
/// threshold, where it would otherwise hand out a fresh mapping + 16.
/// The extra page is under 4% of such a block.
const LARGE: usize = 128 << 10;
const PAGE: usize = 4096;
/// Where a large block keeps the start of the system block it lies in:
/// the word before it, inside the padding (always 16 bytes or more, as
/// the system block is 16-aligned and the large block starts after it).
const HEADER: usize = size_of::<usize>();

/// [`System`], with blocks of [`LARGE`] bytes or more starting on a page.
pub struct PageAlignedLarge;

/// The system block behind a large block of `size` bytes: a page longer.
/// None if `layout` is not large (its block is the system's own) or the
/// size overflows.
fn system_layout(layout: Layout) -> Option<Layout> {
    if layout.size() < LARGE || layout.align() > PAGE {
        return None;
    }
    Layout::from_size_align(layout.size().checked_add(PAGE)?, 16).ok()
}

/// Places a large block in system block `raw` (null passes through).
///
/// # Safety
/// `raw` is null or the start of a live system block at least a page
/// longer than the large block.
unsafe fn place(raw: *mut u8) -> *mut u8 {
    if raw.is_null() {
        return raw;
    }
    let block = raw.wrapping_add(PAGE - raw as usize % PAGE);
    // SAFETY: `block` is within raw's first page + 1 and 16 or more bytes
    // past `raw` (both 16-aligned, distinct), so the header word before it
    // is inside the system block and aligned.
    unsafe { block.sub(HEADER).cast::<*mut u8>().write(raw) };
    block
}

/// The system block that large block `block` lies in.
///
/// # Safety
/// `block` came from [`place`].
unsafe fn system_block(block: *mut u8) -> *mut u8 {
    // SAFETY: `place` wrote the header there.
    unsafe { block.sub(HEADER).cast::<*mut u8>().read() }
}

// SAFETY: a layout that is not large goes to `System` as it is. A large
// block lies inside a system block a page longer that `system_layout`
// derives from the caller's layout alone, starts on a page (so meets any
// alignment up to a page), and is freed through the header `place` wrote.
unsafe impl GlobalAlloc for PageAlignedLarge {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match system_layout(layout) {
            // SAFETY: a non-zero size; `place` gets a fresh block or null.
            Some(raw) => unsafe { place(System.alloc(raw)) },
            // SAFETY: the caller's layout, as the caller gave it.
            None => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match system_layout(layout) {
            // SAFETY: as in `alloc`; the header is in the padding, not in
            // the zeroed block.
            Some(raw) => unsafe { place(System.alloc_zeroed(raw)) },
            // SAFETY: as in `alloc`.
            None => unsafe { System.alloc_zeroed(layout) },
        }
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        match system_layout(layout) {
            // SAFETY: a large layout's block came from `place`, inside a
            // system block of layout `raw`.
            Some(raw) => unsafe { System.dealloc(system_block(block), raw) },
            // SAFETY: from `System` with this layout.
            None => unsafe { System.dealloc(block, layout) },
        }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller promises `new_size` rounded up to the
        // alignment does not overflow isize.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (system_layout(layout), system_layout(new_layout)) {
            // SAFETY: from `System` with `layout`, staying small.
            (None, None) => unsafe { System.realloc(block, layout, new_size) },
            (Some(old_raw), Some(new_raw)) => {
                // SAFETY: the block came from `place` in a system block of
                // `old_raw`; glibc keeps or copies its bytes, after which
                // the block's bytes sit at the same offset in the new
                // system block and move (overlapping) to its page.
                unsafe {
                    let raw = system_block(block);
                    let offset = block.offset_from(raw) as usize;
                    let moved = System.realloc(raw, old_raw, new_raw.size());
                    if moved.is_null() {
                        return moved;
                    }
                    let new_block = moved.wrapping_add(PAGE - moved as usize % PAGE);
                    if new_block != moved.add(offset) {
                        ptr::copy(moved.add(offset), new_block, layout.size().min(new_size));
                    }
                    place(moved)
                }
            }
            // Between the two kinds of block: a new one, then the copy.
            _ => {
                // SAFETY: a non-zero size; both blocks live until the copy
                // of the shorter length is done; `block` is freed as it
                // was allocated.
                unsafe {
                    let moved = self.alloc(new_layout);
                    if !moved.is_null() {
                        ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size));
                        self.dealloc(block, layout);
                    }
                    moved
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(a: &PageAlignedLarge, layout: Layout) -> *mut u8 {
        // SAFETY: non-zero size; writes stay in the block.
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null());
            for i in 0..layout.size() {
                *p.add(i) = i as u8;
            }
            p
        }
    }

    fn holds_pattern(p: *const u8, len: usize) -> bool {
        // SAFETY: the callers' blocks are at least `len` long.
        (0..len).all(|i| unsafe { *p.add(i) } == i as u8)
    }

    #[test]
    fn large_blocks_start_on_a_page_small_ones_are_the_systems() {
        let a = PageAlignedLarge;
        for (size, align) in [(LARGE, 1), (LARGE + 1, 16), (3 * LARGE, 64), (LARGE, PAGE)] {
            let layout = Layout::from_size_align(size, align).unwrap();
            let p = filled(&a, layout);
            assert_eq!(p as usize % PAGE, 0, "{layout:?}");
            // SAFETY: allocated above with `layout`.
            unsafe { a.dealloc(p, layout) };
        }
        assert!(system_layout(Layout::from_size_align(LARGE - 1, 8).unwrap()).is_none());
        assert!(system_layout(Layout::from_size_align(LARGE, 2 * PAGE).unwrap()).is_none());
    }

    #[test]
    fn realloc_keeps_the_bytes_and_the_alignment_across_sizes() {
        let a = PageAlignedLarge;
        let mut layout = Layout::from_size_align(100, 4).unwrap();
        let mut p = filled(&a, layout);
        // Small to large, larger, much larger (moved), smaller, small.
        for new_size in [LARGE + 5, 2 * LARGE, 64 * LARGE, LARGE + 1, 50] {
            // SAFETY: `p` is live with `layout`; `new_size` is non-zero.
            p = unsafe { a.realloc(p, layout, new_size) };
            assert!(!p.is_null());
            let kept = layout.size().min(new_size);
            assert!(holds_pattern(p, kept), "{} -> {new_size}", layout.size());
            if new_size >= LARGE {
                assert_eq!(p as usize % PAGE, 0);
            }
            layout = Layout::from_size_align(new_size, 4).unwrap();
            // SAFETY: `p` is `new_size` long.
            unsafe {
                for i in kept..new_size {
                    *p.add(i) = i as u8;
                }
            }
        }
        // SAFETY: live with `layout`.
        unsafe { a.dealloc(p, layout) };
    }

    #[test]
    fn zeroed_large_blocks_are_zero() {
        let a = PageAlignedLarge;
        let layout = Layout::from_size_align(LARGE + 3, 16).unwrap();
        // SAFETY: non-zero size; reads stay in the block; freed as made.
        unsafe {
            let z = a.alloc_zeroed(layout);
            assert_eq!(z as usize % PAGE, 0);
            assert!((0..layout.size()).all(|i| *z.add(i) == 0));
            a.dealloc(z, layout);
        }
    }
}
