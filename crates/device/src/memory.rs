//! Guest memory: turning a backing's guest addresses into host iovecs,
//! hashing what a backing holds, and tracking which resource owns each
//! guest page so overlapping backings are caught.
//!
//! Backings are stored as guest addresses and resolved again whenever the
//! memory table changes; host pointers are never kept across a change.

use std::collections::{BTreeMap, BTreeSet};

use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress, VolatileSlice,
};

use crate::renderer::HostIovec;

/// Guest page size used for ownership tracking.
pub const PAGE_SIZE: u64 = 4096;

pub use gpuswap_protocol::GuestExtent;

/// Why a backing could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackingError {
    #[error("entry {index} has length 0")]
    EmptyEntry { index: usize },
    #[error("entry {index} ({addr:#x} + {len:#x}) wraps the address space")]
    Wraps { index: usize, addr: u64, len: u32 },
    #[error("entry {index} ({addr:#x} + {len:#x}) is not in guest RAM")]
    OutsideGuestRam { index: usize, addr: u64, len: u32 },
    #[error("backing is shorter than the {needed} bytes read")]
    TooShort { needed: u64 },
}

/// Checks entries for zero lengths and address wrap-around; returns the
/// backing's length.
pub fn validate(extents: &[GuestExtent]) -> Result<u64, BackingError> {
    // One branch-free pass for the usual all-good backing; the first bad
    // entry is looked for (in a second pass) only if there is one.
    let (total, bad) = extents.iter().fold((0u64, false), |(total, bad), e| {
        // An end at or below the start: the length is 0 or the extent
        // wraps (a `u32` length wraps at most once).
        let empty_or_wraps = e.addr.wrapping_add(u64::from(e.len)) <= e.addr;
        (total + u64::from(e.len), bad | empty_or_wraps)
    });
    if !bad {
        return Ok(total);
    }
    for (index, e) in extents.iter().enumerate() {
        if e.len == 0 {
            return Err(BackingError::EmptyEntry { index });
        }
        if e.addr.checked_add(u64::from(e.len)).is_none() {
            return Err(BackingError::Wraps {
                index,
                addr: e.addr,
                len: e.len,
            });
        }
    }
    Ok(total)
}

/// The size of guest RAM: every region of `mem`.
pub fn ram_bytes<M: GuestMemoryBackend>(mem: &M) -> u64 {
    mem.iter().map(|r| r.len()).sum()
}

/// Resolves extents to host iovecs in `mem`, splitting extents that cross
/// memory regions and merging neighbours that are contiguous on the host.
/// Checks every entry on the way: the error is about the first entry that
/// is empty, wraps the address space or is not in guest RAM, so success
/// means [`validate`] passes too, with the iovecs' length.
pub fn resolve<M: GuestMemoryBackend>(
    mem: &M,
    extents: &[GuestExtent],
) -> Result<Vec<HostIovec>, BackingError> {
    let mut iovecs: Vec<HostIovec> = Vec::with_capacity(extents.len());
    let mut rest = extents;
    while let Some(e) = rest.first() {
        let index = extents.len() - rest.len();
        rest = &rest[1..];
        // Backings mostly lie in one region: after a region lookup, the
        // extents that follow in the same region cost a bounds check and
        // an addition each.
        if let Some(region) = resolve_one(mem, index, e, &mut iovecs)? {
            rest = &rest[region.extend(rest, &mut iovecs)..];
        }
    }
    Ok(iovecs)
}

/// Appends extent `index`, `e`, to `iovecs` (split where it crosses
/// regions) and returns the region it lies in, if one holds it whole.
fn resolve_one<M: GuestMemoryBackend>(
    mem: &M,
    index: usize,
    e: &GuestExtent,
    iovecs: &mut Vec<HostIovec>,
) -> Result<Option<HostRegion>, BackingError> {
    if e.len == 0 {
        return Err(BackingError::EmptyEntry { index });
    }
    if e.addr.checked_add(u64::from(e.len)).is_none() {
        return Err(BackingError::Wraps {
            index,
            addr: e.addr,
            len: e.len,
        });
    }
    let region = mem.find_region(GuestAddress(e.addr)).and_then(|r| {
        let start = r.start_addr().0;
        Some(HostRegion {
            start,
            // Short of the address space's last byte, so that an extent
            // `host_address` takes cannot wrap (one ending there goes the
            // slow way).
            len: r.len().min(u64::MAX - start),
            host: r.get_host_address(MemoryRegionAddress(0)).ok()?,
        })
    });
    if let Some(base) = region.and_then(|r| r.host_address(e)) {
        push_merged(iovecs, base, e.len as usize);
        return Ok(region);
    }
    // An extent crossing regions (or partly outside guest RAM).
    let outside = || BackingError::OutsideGuestRam {
        index,
        addr: e.addr,
        len: e.len,
    };
    let mut covered = 0usize;
    for slice in mem.get_slices(GuestAddress(e.addr), e.len as usize) {
        let slice = slice.map_err(|_| outside())?;
        covered += slice.len();
        push_merged(iovecs, slice.ptr_guard_mut().as_ptr(), slice.len());
    }
    if covered != e.len as usize {
        return Err(outside());
    }
    Ok(None)
}

/// A guest memory region: where it starts and ends in guest memory, and
/// where it is mapped on the host.
#[derive(Clone, Copy)]
struct HostRegion {
    start: u64,
    len: u64,
    host: *mut u8,
}

impl HostRegion {
    /// The host address of `e` if it is not empty and lies wholly in this
    /// region. The address is only computed (`wrapping_add`, inside the
    /// region's mapping), not dereferenced.
    #[inline(always)]
    fn host_address(&self, e: &GuestExtent) -> Option<*mut u8> {
        // Offsets in the region, wrapping: `e` below the region starts
        // past `u64::MAX - start`, so beyond `len`; an empty `e` ends where
        // it starts, and one that wraps ends before it starts.
        let first = e.addr.wrapping_sub(self.start);
        let end = first.wrapping_add(u64::from(e.len));
        let inside = first < end && end <= self.len;
        inside.then(|| self.host.wrapping_add(first as usize))
    }

    /// Appends the leading extents of `extents` that lie in this region
    /// (none empty) to `iovecs`, merged with its last iovec
    /// and with each other where contiguous on the host; returns how many
    /// extents that was. The iovec being extended is kept in a local,
    /// so merging touches no memory.
    fn extend(&self, extents: &[GuestExtent], iovecs: &mut Vec<HostIovec>) -> usize {
        let Some(mut last) = iovecs.pop() else {
            return 0;
        };
        let mut rest = extents;
        while let [e, tail @ ..] = rest {
            let Some(base) = self.host_address(e) else {
                break;
            };
            // Only compares addresses: `wrapping_add` computes the one-past-
            // the-end address of an iovec inside a mapped region.
            if last.base.wrapping_add(last.len) == base {
                last.len += e.len as usize;
            } else {
                iovecs.push(last);
                last = HostIovec {
                    base,
                    len: e.len as usize,
                };
            }
            rest = tail;
        }
        let done = extents.len() - rest.len();
        iovecs.push(last);
        done
    }
}

/// Appends `len` bytes at `base`, extending the last iovec when `base`
/// follows it on the host.
fn push_merged(iovecs: &mut Vec<HostIovec>, base: *mut u8, len: usize) {
    match iovecs.last_mut() {
        // Only compares addresses: `wrapping_add` computes the one-past-
        // the-end address of an iovec inside a mapped region; nothing is
        // read.
        Some(last) if last.base.wrapping_add(last.len) == base => last.len += len,
        _ => iovecs.push(HostIovec { base, len }),
    }
}

/// Hands the first `len` bytes of a backing (all of it if it is shorter)
/// to `visit` in pieces of at most 64 KiB, read from guest memory through
/// volatile copies (the guest may be writing it).
pub fn visit_backing<M: GuestMemoryBackend>(
    mem: &M,
    extents: &[GuestExtent],
    len: u64,
    mut visit: impl FnMut(&[u8]),
) -> Result<(), BackingError> {
    let mut left = len;
    let mut bounce = vec![0u8; 64 * 1024];
    for (index, e) in extents.iter().enumerate() {
        if left == 0 {
            break;
        }
        let take = left.min(u64::from(e.len));
        for slice in mem.get_slices(GuestAddress(e.addr), take as usize) {
            let slice = slice.map_err(|_| BackingError::OutsideGuestRam {
                index,
                addr: e.addr,
                len: e.len,
            })?;
            visit_slice(&slice, &mut bounce, &mut visit);
        }
        left -= take;
    }
    Ok(())
}

fn visit_slice<B: vm_memory::bitmap::BitmapSlice>(
    slice: &VolatileSlice<B>,
    bounce: &mut [u8],
    visit: &mut impl FnMut(&[u8]),
) {
    let mut offset = 0;
    while offset < slice.len() {
        let n = bounce.len().min(slice.len() - offset);
        // `offset + n <= slice.len()`, so the subslice always exists.
        if let Ok(part) = slice.subslice(offset, n) {
            part.copy_to(&mut bounce[..n]);
            visit(&bounce[..n]);
        }
        offset += n;
    }
}

/// Reads `dst.len()` bytes starting `offset` bytes into a backing.
pub fn read_backing<M: GuestMemoryBackend>(
    mem: &M,
    extents: &[GuestExtent],
    offset: u64,
    dst: &mut [u8],
) -> Result<(), BackingError> {
    let mut skip = offset;
    let mut done = 0usize;
    for (index, e) in extents.iter().enumerate() {
        if done == dst.len() {
            break;
        }
        let len = u64::from(e.len);
        if skip >= len {
            skip -= len;
            continue;
        }
        let take = ((len - skip) as usize).min(dst.len() - done);
        mem.read_slice(&mut dst[done..done + take], GuestAddress(e.addr + skip))
            .map_err(|_| BackingError::OutsideGuestRam {
                index,
                addr: e.addr,
                len: e.len,
            })?;
        done += take;
        skip = 0;
    }
    if done == dst.len() {
        Ok(())
    } else {
        Err(BackingError::TooShort {
            needed: offset + dst.len() as u64,
        })
    }
}

/// Which live resources' backings cover each guest page.
///
/// Page granularity is exact for Linux guests, which back buffers with
/// whole pages; two resources sharing a page with disjoint byte ranges
/// would be reported too, and no known driver does that.
///
/// A bitmap per memory region says which pages some backing covers, and
/// each resource's claimed extents are kept. Claiming pages nobody holds
/// (every well-behaved attach) and releasing pages held by one resource
/// (every detach while no overlap exists) touch only the bitmap: one bit
/// per page, so a 1 GiB backing scattered over guest RAM touches a few
/// thousand cache lines instead of a word per page. Who holds a page is
/// worked out from the kept extents only when a claim finds it taken.
#[derive(Debug, Default)]
pub struct PageOwners {
    regions: Vec<RegionOwners>,
    /// The resources whose pages are marked here. Their extents are the
    /// device's (its resource table is where a backing is stored): a claim
    /// that collides gets them from the caller to find the other holders.
    claimants: BTreeSet<u32>,
    /// Pages held by more than one live resource (only after an overlap
    /// violation), with every holder.
    shared: BTreeMap<u64, Vec<u32>>,
}

#[derive(Debug)]
struct RegionOwners {
    /// First page (the region's start rounded down to a page).
    start: u64,
    /// Pages with a bit here: the region's pages plus one, for a region
    /// that does not end on a page boundary.
    slots: usize,
    /// One bit per page: some live backing covers it.
    held: Vec<u64>,
}

/// Calls `f(word, mask)` for the words holding bits `first..first + count`
/// of `bits`, with `mask` selecting those bits in each word.
fn for_each_word(bits: &mut [u64], first: usize, count: usize, mut f: impl FnMut(&mut u64, u64)) {
    let end = first + count;
    let mut i = first;
    while i < end {
        let bit = i % 64;
        let n = (64 - bit).min(end - i);
        let mask = if n == 64 {
            !0
        } else {
            ((1u64 << n) - 1) << bit
        };
        f(&mut bits[i / 64], mask);
        i += n;
    }
}

impl PageOwners {
    /// An empty map covering every region of `mem`.
    pub fn for_memory<M: GuestMemoryBackend>(mem: &M) -> Self {
        let mut regions: Vec<RegionOwners> = mem
            .iter()
            .map(|r| {
                let slots = (r.len().div_ceil(PAGE_SIZE) + 1) as usize;
                RegionOwners {
                    start: r.start_addr().0 & !(PAGE_SIZE - 1),
                    slots,
                    held: vec![0; slots.div_ceil(64)],
                }
            })
            .collect();
        regions.sort_by_key(|r| r.start);
        PageOwners {
            regions,
            ..Default::default()
        }
    }

    /// Calls `f(region, first slot, count)` for the runs of pages that `e`
    /// touches and that have a slot; pages outside every region are
    /// skipped. The region of a page is the last one starting at or below
    /// it.
    fn for_each_run(
        regions: &mut [RegionOwners],
        e: &GuestExtent,
        mut f: impl FnMut(&mut RegionOwners, usize, usize),
    ) {
        let end = e.end();
        let mut page = e.addr & !(PAGE_SIZE - 1);
        while page < end {
            let i = regions.partition_point(|r| r.start <= page);
            // Where the next region takes over (regions are sorted).
            let next = regions.get(i).map(|r| r.start);
            let region = i.checked_sub(1).and_then(|i| regions.get_mut(i));
            let (first, count) = match region {
                Some(ref r) => {
                    let first = ((page - r.start) / PAGE_SIZE) as usize;
                    let mut count = ((end - page).div_ceil(PAGE_SIZE) as usize)
                        .min(r.slots.saturating_sub(first));
                    if let Some(next) = next {
                        count = count.min(((next - page) / PAGE_SIZE) as usize);
                    }
                    (first, count)
                }
                None => (0, 0),
            };
            match region {
                Some(r) if count > 0 => {
                    f(r, first, count);
                    page += count as u64 * PAGE_SIZE;
                }
                // Below the first region, or past this region's slots:
                // nothing until the next region.
                _ => match next {
                    Some(start) => page = start,
                    None => return,
                },
            }
        }
    }

    /// Where the region holding the page at `page` starts and where its
    /// pages end (its last slot, or where the next region takes over).
    fn span(regions: &[RegionOwners], page: u64) -> Option<(usize, u64, u64)> {
        let i = regions
            .partition_point(|r| r.start <= page)
            .checked_sub(1)?;
        let r = &regions[i];
        let mut end = r.start.saturating_add(r.slots as u64 * PAGE_SIZE);
        if let Some(next) = regions.get(i + 1) {
            end = end.min(next.start);
        }
        Some((i, r.start, end))
    }

    /// Calls `f(held, start, first slot, count)` for the runs of pages of
    /// every extent, like [`Self::for_each_run`] but with the region's
    /// bitmap and first page. Backings mostly lie in one region: the
    /// extents that follow one in the same region's span are walked in a
    /// loop that keeps the span and the bitmap at hand, where a run goes to
    /// `fast(held, first slot, count)` instead. `fast` either does what `f`
    /// would and returns true, or changes nothing and returns false to
    /// leave the run to `f`, outside the loop: `fast` calls nothing, as a
    /// call in the loop (even one never made) costs it its registers.
    #[inline(always)]
    fn for_each_extent_run(
        regions: &mut [RegionOwners],
        extents: &[GuestExtent],
        mut fast: impl FnMut(&mut [u64], usize, usize) -> bool,
        mut f: impl FnMut(&mut [u64], u64, usize, usize),
    ) {
        let mut rest = extents;
        while let Some(e) = rest.first() {
            let page = e.addr & !(PAGE_SIZE - 1);
            let span = Self::span(regions, page).filter(|&(_, _, hi)| e.end() <= hi);
            // `walk_span` takes `e` at least, unless `fast` declines it.
            let done = match span {
                Some((i, lo, hi)) => Self::walk_span(&mut regions[i].held, lo, hi, rest, &mut fast),
                None => 0,
            };
            if done > 0 {
                rest = &rest[done..];
                continue;
            }
            // Across regions or outside them, empty, or declined by `fast`.
            Self::for_each_run(regions, e, |r, first, count| {
                f(&mut r.held, r.start, first, count)
            });
            rest = &rest[1..];
        }
    }

    /// The loop of [`Self::for_each_extent_run`]: hands the runs of pages
    /// of the leading extents of `extents` that lie in the span `lo..hi` of
    /// the region whose bitmap is `held` to `fast`; returns how many
    /// extents it took, stopping at one that `fast` declines. Not inlined:
    /// on its own, its loop keeps what it needs in registers.
    #[inline(never)]
    fn walk_span(
        held: &mut [u64],
        lo: u64,
        hi: u64,
        extents: &[GuestExtent],
        fast: &mut impl FnMut(&mut [u64], usize, usize) -> bool,
    ) -> usize {
        let span = hi - lo;
        let mut iter = extents.iter();
        while let Some(e) = iter.next() {
            // Where the entry's first and last byte are in the span (`lo`
            // is page-aligned, so their pages are the slots). The offsets
            // wrap: an entry below the span or wrapping the address space
            // has its first byte after its last or outside the span; so
            // does one empty at a page start (one empty inside a page has
            // that page, as in `for_each_run`).
            let first_byte = e.addr.wrapping_sub(lo);
            let last_byte = first_byte.wrapping_add(u64::from(e.len)).wrapping_sub(1);
            if last_byte < span {
                let first = (first_byte / PAGE_SIZE) as usize;
                let last = (last_byte / PAGE_SIZE) as usize;
                // The usual entry, one page: a count `fast` knows is 1.
                if first == last && fast(held, first, 1) {
                    continue;
                }
                if first < last && fast(held, first, last - first + 1) {
                    continue;
                }
            }
            return extents.len() - iter.len() - 1;
        }
        extents.len()
    }

    /// Sets the bits of `count` slots from `first` of a region starting at
    /// page `start`, appending the pages that were already held to
    /// `taken`.
    fn mark(held: &mut [u64], start: u64, first: usize, count: usize, taken: &mut Vec<u64>) {
        let mut word_base = first & !63;
        for_each_word(held, first, count, |word, mask| {
            let mut hit = *word & mask;
            while hit != 0 {
                let bit = hit.trailing_zeros() as usize;
                taken.push(start + (word_base + bit) as u64 * PAGE_SIZE);
                hit &= hit - 1;
            }
            *word |= mask;
            word_base += 64;
        });
    }

    /// Sets the bits of `count` slots from `first` if none of them is set
    /// yet; returns whether it did.
    #[inline(always)]
    fn mark_free(held: &mut [u64], first: usize, count: usize) -> bool {
        // One page (a constant count in `walk_span`): a word and a bit.
        if count == 1 {
            let word = &mut held[first / 64];
            let bit = 1u64 << (first % 64);
            let free = *word & bit == 0;
            *word |= bit;
            return free;
        }
        let mut free = true;
        for_each_word(held, first, count, |word, mask| free &= *word & mask == 0);
        if free {
            for_each_word(held, first, count, |word, mask| *word |= mask);
        }
        free
    }

    /// Clears the bits of `count` slots from `first`.
    #[inline(always)]
    fn unmark(held: &mut [u64], first: usize, count: usize) {
        if count == 1 {
            held[first / 64] &= !(1u64 << (first % 64));
        } else {
            for_each_word(held, first, count, |word, mask| *word &= !mask);
        }
    }

    /// Marks the pages of `extents` as held by `id`. Returns the other
    /// live resources that already hold one of those pages, found among
    /// `backings` (every attached backing, as the device stores them; read
    /// only when a page is already taken).
    pub fn claim<'a>(
        &mut self,
        id: u32,
        extents: &[GuestExtent],
        backings: impl IntoIterator<Item = (u32, &'a [GuestExtent])>,
    ) -> Vec<u32> {
        // Pages some backing already covered, in the order met.
        let mut taken = Vec::new();
        Self::for_each_extent_run(
            &mut self.regions,
            extents,
            // Pages already taken are rare: `mark` notes them.
            Self::mark_free,
            |held, start, first, count| Self::mark(held, start, first, count, &mut taken),
        );
        let conflicts = if taken.is_empty() {
            Vec::new()
        } else {
            self.record_overlaps(id, &taken, backings)
        };
        self.claimants.insert(id);
        conflicts
    }

    /// `id` claims pages that were already held (`taken`, in the order
    /// met, maybe repeated): finds their other holders among the claimants'
    /// `backings`, records the pages as shared, and returns the other
    /// holders in the order their pages were met. A page only `id` itself
    /// holds (an entry repeated in its own backing) is no overlap.
    fn record_overlaps<'a>(
        &mut self,
        id: u32,
        taken: &[u64],
        backings: impl IntoIterator<Item = (u32, &'a [GuestExtent])>,
    ) -> Vec<u32> {
        let mut pages = taken.to_vec();
        pages.sort_unstable();
        pages.dedup();
        let mut holders: Vec<Vec<u32>> = vec![Vec::new(); pages.len()];
        for (other, extents) in backings {
            if other == id || !self.claimants.contains(&other) {
                continue;
            }
            for e in extents {
                let mut k = pages.partition_point(|&p| p < e.addr & !(PAGE_SIZE - 1));
                while k < pages.len() && pages[k] < e.end() {
                    if holders[k].last() != Some(&other) {
                        holders[k].push(other);
                    }
                    k += 1;
                }
            }
        }
        for (&page, others) in pages.iter().zip(&holders) {
            if others.is_empty() {
                continue;
            }
            let all = self.shared.entry(page).or_insert_with(|| others.clone());
            if !all.contains(&id) {
                all.push(id);
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        let mut conflicts = Vec::new();
        for page in taken {
            if let Ok(k) = pages.binary_search(page) {
                for &other in &holders[k] {
                    if seen.insert(other) {
                        conflicts.push(other);
                    }
                }
            }
        }
        conflicts
    }

    /// Releases the pages `id` claimed with `extents`; a page another
    /// resource also holds stays held by that one. A resource that claimed
    /// nothing here (e.g. one whose backing left guest RAM when the memory
    /// table changed) releases nothing.
    pub fn release(&mut self, id: u32, extents: &[GuestExtent]) {
        if !self.claimants.remove(&id) {
            return;
        }
        let claimed = extents;
        // Pages `id` shares with others stay held by them.
        let mut kept = Vec::new();
        if !self.shared.is_empty() {
            for e in claimed {
                kept.extend(
                    self.shared
                        .range(e.addr & !(PAGE_SIZE - 1)..e.end())
                        .map(|(&page, _)| page),
                );
            }
            kept.sort_unstable();
            kept.dedup();
            for page in &kept {
                if let Some(all) = self.shared.get_mut(page) {
                    all.retain(|&o| o != id);
                    if all.len() <= 1 {
                        self.shared.remove(page);
                    }
                }
            }
        }
        Self::for_each_extent_run(
            &mut self.regions,
            claimed,
            |held, first, count| {
                Self::unmark(held, first, count);
                true
            },
            |held, _, first, count| Self::unmark(held, first, count),
        );
        for &page in &kept {
            let e = GuestExtent {
                addr: page,
                len: PAGE_SIZE as u32,
            };
            Self::for_each_run(&mut self.regions, &e, |region, first, _| {
                region.held[first / 64] |= 1 << (first % 64);
            });
        }
    }

    /// Cross-checks the index against `expected`, each live resource's
    /// attached extents (what the device's resource table says), for tests
    /// and fuzzing: the claimants must be exactly those resources, the held
    /// bits exactly the pages they cover, and the shared pages exactly
    /// those more than one resource covers, with those holders. Recomputes
    /// the whole index, so it costs a walk over every claimed page.
    pub fn check_consistency(
        &self,
        expected: &BTreeMap<u32, &[GuestExtent]>,
    ) -> Result<(), String> {
        if !self.claimants.iter().eq(expected.keys()) {
            return Err(format!(
                "page index claimants {:?}, resource table has {:?}",
                self.claimants,
                expected.keys().collect::<Vec<_>>()
            ));
        }
        let mut regions: Vec<RegionOwners> = self
            .regions
            .iter()
            .map(|r| RegionOwners {
                held: vec![0; r.held.len()],
                ..*r
            })
            .collect();
        let mut holders: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
        for (&id, extents) in expected {
            Self::for_each_extent_run(
                &mut regions,
                extents,
                |_, _, _| false,
                |held, start, first, count| {
                    for slot in first..first + count {
                        held[slot / 64] |= 1 << (slot % 64);
                        let ids = holders.entry(start + slot as u64 * PAGE_SIZE).or_default();
                        if ids.last() != Some(&id) {
                            ids.push(id);
                        }
                    }
                },
            );
        }
        for (have, want) in self.regions.iter().zip(&regions) {
            if have.held != want.held {
                return Err(format!(
                    "held pages of the region at {:#x} differ from the claims",
                    have.start
                ));
            }
        }
        holders.retain(|_, ids| ids.len() > 1);
        let mut shared = self.shared.clone();
        for ids in shared.values_mut() {
            ids.sort_unstable();
        }
        if shared != holders {
            return Err(format!(
                "shared pages {shared:x?}, claims overlap on {holders:x?}"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn two_regions() -> GuestMemoryMmap<()> {
        // Two adjacent regions: contiguous in guest space, not on the host.
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x4000), (GuestAddress(0x4000), 0x4000)])
            .unwrap()
    }

    #[test]
    fn entry_crossing_regions_is_split() {
        let mem = two_regions();
        let iov = resolve(
            &mem,
            &[GuestExtent {
                addr: 0x3000,
                len: 0x2000,
            }],
        )
        .unwrap();
        assert_eq!(iov.len(), 2);
        assert_eq!(iov[0].len + iov[1].len, 0x2000);
    }

    #[test]
    fn contiguous_entries_are_merged() {
        let mem = two_regions();
        let extents = [
            GuestExtent {
                addr: 0x1000,
                len: 0x1000,
            },
            GuestExtent {
                addr: 0x2000,
                len: 0x1000,
            },
        ];
        assert_eq!(resolve(&mem, &extents).unwrap().len(), 1);
    }

    #[test]
    fn entries_outside_ram_are_refused() {
        let mem = two_regions();
        let past_end = [GuestExtent {
            addr: 0x7000,
            len: 0x2000,
        }];
        assert!(matches!(
            resolve(&mem, &past_end),
            Err(BackingError::OutsideGuestRam { index: 0, .. })
        ));
        let wraps = [GuestExtent {
            addr: u64::MAX - 10,
            len: 100,
        }];
        assert!(matches!(validate(&wraps), Err(BackingError::Wraps { .. })));
    }

    /// `validate` and `resolve` against plain per-entry versions, over
    /// random backings in regions with gaps, adjacent regions and entries
    /// that are empty, wrap, cross regions or leave guest RAM.
    #[test]
    fn validate_and_resolve_match_a_reference() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0x1000), 0x8000),
            (GuestAddress(0x9000), 0x4000),
            (GuestAddress(0x20000), 0x3800),
        ])
        .unwrap();
        let reference_validate = |extents: &[GuestExtent]| {
            let mut total = 0u64;
            for (index, e) in extents.iter().enumerate() {
                if e.len == 0 {
                    return Err(BackingError::EmptyEntry { index });
                }
                if e.addr.checked_add(u64::from(e.len)).is_none() {
                    let (addr, len) = (e.addr, e.len);
                    return Err(BackingError::Wraps { index, addr, len });
                }
                total += u64::from(e.len);
            }
            Ok(total)
        };
        let reference_resolve = |extents: &[GuestExtent]| {
            let mut iovecs: Vec<HostIovec> = Vec::new();
            for (index, e) in extents.iter().enumerate() {
                reference_validate(std::slice::from_ref(e)).map_err(|e| match e {
                    BackingError::EmptyEntry { .. } => BackingError::EmptyEntry { index },
                    BackingError::Wraps { addr, len, .. } => {
                        BackingError::Wraps { index, addr, len }
                    }
                    other => other,
                })?;
                let outside = BackingError::OutsideGuestRam {
                    index,
                    addr: e.addr,
                    len: e.len,
                };
                let mut covered = 0;
                for slice in mem.get_slices(GuestAddress(e.addr), e.len as usize) {
                    let slice = slice.map_err(|_| outside.clone())?;
                    covered += slice.len();
                    push_merged(&mut iovecs, slice.ptr_guard_mut().as_ptr(), slice.len());
                }
                if covered != e.len as usize {
                    return Err(outside);
                }
            }
            Ok(iovecs)
        };
        let mut rng = gpuswap_testkit::Rng::new(15);
        for round in 0..2000 {
            let extents: Vec<GuestExtent> = (0..1 + rng.below(12))
                .map(|_| {
                    let addr = match rng.below(40) {
                        0 => u64::MAX - rng.below(0x2000),
                        1..=20 => rng.below(0x24000) & !0xfff,
                        _ => rng.below(0x24000),
                    };
                    let len = match rng.below(30) {
                        0 => 0,
                        1..=20 => 0x1000,
                        _ => 1 + rng.below(0x3000) as u32,
                    };
                    GuestExtent { addr, len }
                })
                .collect();
            let want = reference_validate(&extents);
            assert_eq!(validate(&extents), want, "round {round}: {extents:x?}");
            // `resolve` checks what `validate` does, in entry order with
            // entries outside guest RAM; attach takes the backing's length
            // from its iovecs.
            let resolved = resolve(&mem, &extents);
            assert_eq!(
                resolved,
                reference_resolve(&extents),
                "round {round}: {extents:x?}"
            );
            if let Ok(iovecs) = &resolved {
                let len: u64 = iovecs.iter().map(|v| v.len as u64).sum();
                assert_eq!(Ok(len), want, "round {round}: {extents:x?}");
            }
        }
    }

    #[test]
    fn a_backing_is_visited_in_entry_order_up_to_its_length() {
        let mem = two_regions();
        mem.write_slice(&[1, 2, 3, 4], GuestAddress(0x3ffe))
            .unwrap();
        mem.write_slice(&[9], GuestAddress(0x100)).unwrap();
        let extents = [
            GuestExtent {
                addr: 0x3ffe,
                len: 4,
            },
            GuestExtent {
                addr: 0x100,
                len: 1,
            },
        ];
        let read = |len| {
            let mut bytes = Vec::new();
            visit_backing(&mem, &extents, len, |b| bytes.extend_from_slice(b)).unwrap();
            bytes
        };
        assert_eq!(read(5), [1, 2, 3, 4, 9]);
        assert_eq!(read(2), [1, 2]);
        assert_eq!(read(64), [1, 2, 3, 4, 9], "a short backing is read whole");
    }

    /// The run walk visits exactly the slots a per-page lookup finds:
    /// regions with gaps between them, adjacent regions, extents that
    /// start below, cross, or run past regions.
    #[test]
    fn page_walk_matches_per_page_lookup() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0x2000), 0x3000),
            (GuestAddress(0x5000), 0x2000),
            (GuestAddress(0x10000), 0x1800),
        ])
        .unwrap();
        let mut owners = PageOwners::for_memory(&mem);
        let reference = |regions: &[RegionOwners], page: u64| -> Option<(usize, usize)> {
            let i = regions
                .partition_point(|r| r.start <= page)
                .checked_sub(1)?;
            let index = ((page - regions[i].start) / PAGE_SIZE) as usize;
            (index < regions[i].slots).then_some((i, index))
        };
        let starts: Vec<u64> = owners.regions.iter().map(|r| r.start).collect();
        for addr in (0..0x14000u64).step_by(0x800) {
            for len in [1u32, 0x800, 0x1000, 0x1001, 0x3000, 0x6000, 0x10000] {
                let e = GuestExtent { addr, len };
                let mut want = Vec::new();
                let mut page = addr & !(PAGE_SIZE - 1);
                while page < e.end() {
                    if let Some(slot) = reference(&owners.regions, page) {
                        want.push((page, slot));
                    }
                    page += PAGE_SIZE;
                }
                let mut got = Vec::new();
                PageOwners::for_each_run(&mut owners.regions, &e, |region, first, count| {
                    let i = starts.iter().position(|&s| s == region.start).unwrap();
                    for k in first..first + count {
                        got.push((region.start + k as u64 * PAGE_SIZE, (i, k)));
                    }
                });
                assert_eq!(got, want, "extent {e:?}");
            }
        }
    }

    /// Random claims and releases against a plain model: which resources
    /// hold each page, and which overlaps a claim reports.
    #[test]
    fn page_owners_match_a_model() {
        use std::collections::{BTreeMap, BTreeSet};
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x40000),
            (GuestAddress(0x40000), 0x20000),
            (GuestAddress(0x100000), 0x30000),
        ])
        .unwrap();
        let mut owners = PageOwners::for_memory(&mem);
        let mut model: BTreeMap<u32, Vec<GuestExtent>> = BTreeMap::new();
        let pages_of = |ext: &[GuestExtent]| -> BTreeSet<u64> {
            ext.iter()
                .flat_map(|e| (e.addr / PAGE_SIZE)..e.end().div_ceil(PAGE_SIZE))
                .collect()
        };
        let mut rng = gpuswap_testkit::Rng::new(0x2545_f491_4f6c_dd1d);
        let mut rand = move |n: u64| rng.below(n);
        for _ in 0..3000 {
            let id = 1 + rand(6) as u32;
            if let Some(ext) = model.remove(&id) {
                owners.release(id, &ext);
            } else {
                // Entries inside guest RAM (attach refuses others); the
                // first two regions are adjacent, so entries may cross.
                let ext: Vec<GuestExtent> = (0..1 + rand(5))
                    .map(|_| {
                        let len = 1 + rand(0x6000);
                        let (base, size) = if rand(2) == 0 {
                            (0, 0x60000)
                        } else {
                            (0x100000, 0x30000)
                        };
                        GuestExtent {
                            addr: base + rand((size - len) / 0x200) * 0x200,
                            len: len as u32,
                        }
                    })
                    .collect();
                let mine = pages_of(&ext);
                let want: BTreeSet<u32> = model
                    .iter()
                    .filter(|(_, e)| !pages_of(e).is_disjoint(&mine))
                    .map(|(&o, _)| o)
                    .collect();
                let backings = model.iter().map(|(&id, e)| (id, e.as_slice()));
                let got = owners.claim(id, &ext, backings);
                assert_eq!(got.len(), want.len(), "no repeats in {got:?}");
                assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), want);
                model.insert(id, ext);
            }
            let expected: BTreeMap<u32, &[GuestExtent]> =
                model.iter().map(|(&id, e)| (id, e.as_slice())).collect();
            owners.check_consistency(&expected).unwrap();
            // Every page with a slot is held exactly when the model says.
            let held = pages_of(&model.values().flatten().copied().collect::<Vec<_>>());
            for r in &owners.regions {
                for k in 0..r.slots {
                    let page = r.start / PAGE_SIZE + k as u64;
                    let next = owners
                        .regions
                        .iter()
                        .find(|n| n.start > r.start)
                        .map_or(u64::MAX, |n| n.start / PAGE_SIZE);
                    if page >= next {
                        continue;
                    }
                    let bit = r.held[k / 64] & (1 << (k % 64)) != 0;
                    assert_eq!(bit, held.contains(&page), "page {page:#x}");
                }
            }
        }
    }

    #[test]
    fn page_owners_report_overlap() {
        let mem = two_regions();
        let mut owners = PageOwners::for_memory(&mem);
        let a = [GuestExtent {
            addr: 0x1000,
            len: 0x2000,
        }];
        let b = [GuestExtent {
            addr: 0x2800,
            len: 0x100,
        }];
        assert!(owners.claim(1, &a, []).is_empty());
        assert_eq!(owners.claim(2, &b, [(1, &a[..])]), vec![1]);
        owners.release(1, &a);
        owners.release(2, &b);
        assert!(owners.claim(2, &b, []).is_empty());
    }

    #[test]
    fn consistency_check_catches_a_wrong_table_and_a_lost_bit() {
        use std::collections::BTreeMap;
        let mem = two_regions();
        let mut owners = PageOwners::for_memory(&mem);
        let a = [GuestExtent {
            addr: 0x1000,
            len: 0x2000,
        }];
        let b = [GuestExtent {
            addr: 0x2000,
            len: 0x1000,
        }];
        owners.claim(1, &a, []);
        owners.claim(2, &b, [(1, &a[..])]);
        let both = BTreeMap::from([(1, &a[..]), (2, &b[..])]);
        owners.check_consistency(&both).unwrap();
        assert_eq!(owners.shared.get(&0x2000), Some(&vec![1, 2]));
        let only_a = BTreeMap::from([(1, &a[..])]);
        assert!(owners.check_consistency(&only_a).is_err());
        let b_grown = [GuestExtent {
            addr: 0x2000,
            len: 0x3000,
        }];
        let grown = BTreeMap::from([(1, &a[..]), (2, &b_grown[..])]);
        assert!(owners.check_consistency(&grown).is_err());
        owners.regions[0].held[0] &= !(1 << 1);
        let err = owners.check_consistency(&both).unwrap_err();
        assert!(err.contains("held pages"), "{err}");
        owners.regions[0].held[0] |= 1 << 1;
        owners.shared.clear();
        let err = owners.check_consistency(&both).unwrap_err();
        assert!(err.contains("shared"), "{err}");
    }
}
