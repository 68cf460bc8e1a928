//! Guest RAM: memfd-backed regions shared with the backend, and a page
//! allocator for test buffers.
//!
//! Every region is its own memfd mapped `MAP_SHARED`, so the backend sees
//! exactly what the test writes. Regions can be added and removed at run
//! time; [`Pages`] keep guest addresses only, never host pointers.

use std::collections::HashSet;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use gpuswap_protocol::wire::MemEntry;
use gpuswap_testkit::Rng;
use nix::sys::memfd::{memfd_create, MFdFlags};
use vhost::VhostUserMemoryRegionInfo;
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap,
};

use crate::error::{Error, Result};

/// Size of a guest page.
pub const PAGE_SIZE: u64 = 4096;

/// One guest RAM region: guest-physical base and size, both page aligned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RegionSpec {
    /// Guest-physical base address.
    pub gpa: u64,
    /// Size in bytes.
    pub size: u64,
}

impl RegionSpec {
    /// A region of `size` bytes at `gpa`.
    pub const fn new(gpa: u64, size: u64) -> Self {
        RegionSpec { gpa, size }
    }

    /// One past the last address.
    pub fn end(&self) -> u64 {
        self.gpa.saturating_add(self.size)
    }

    fn contains(&self, gpa: u64) -> bool {
        gpa >= self.gpa && gpa < self.end()
    }
}

/// How [`GuestRam::alloc`] places pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Physically contiguous pages (one [`MemEntry`] for the lot).
    Contiguous,
    /// Pages picked at random, no two adjacent when that can be helped, so
    /// every page becomes its own entry and successive allocations get
    /// different pages.
    Scattered,
    /// Exactly the pages starting at this guest address (page aligned),
    /// possibly running from one region into an adjacent one.
    At(u64),
}

impl Placement {
    fn name(self) -> &'static str {
        match self {
            Placement::Contiguous => "contiguous",
            Placement::Scattered => "scattered",
            Placement::At(_) => "at address",
        }
    }
}

/// A set of allocated guest pages, in allocation order.
///
/// Dropping it does not free the pages; call [`GuestRam::free`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pages {
    addrs: Vec<u64>,
}

impl Pages {
    /// Pages at these guest addresses (page aligned), e.g. for entries
    /// assembled by hand.
    pub fn from_addrs(addrs: Vec<u64>) -> Self {
        Pages { addrs }
    }

    /// Guest-physical address of every page, in order.
    pub fn addrs(&self) -> &[u64] {
        &self.addrs
    }

    /// Number of pages.
    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    /// Whether there are no pages.
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    /// Total size in bytes.
    pub fn bytes(&self) -> u64 {
        self.addrs.len() as u64 * PAGE_SIZE
    }

    /// Backing entries, adjacent pages merged into one entry.
    pub fn entries(&self) -> Vec<MemEntry> {
        let mut out: Vec<MemEntry> = Vec::new();
        for &a in &self.addrs {
            if let Some(last) = out.last_mut() {
                if last.addr + u64::from(last.length) == a
                    && last.length as u64 + PAGE_SIZE <= u32::MAX as u64
                {
                    last.length += PAGE_SIZE as u32;
                    continue;
                }
            }
            out.push(MemEntry {
                addr: a,
                length: PAGE_SIZE as u32,
                padding: 0,
            });
        }
        out
    }

    /// Backing entries, one per page (never merged).
    pub fn page_entries(&self) -> Vec<MemEntry> {
        self.addrs
            .iter()
            .map(|&addr| MemEntry {
                addr,
                length: PAGE_SIZE as u32,
                padding: 0,
            })
            .collect()
    }
}

/// A page allocator over one contiguous guest-physical range.
#[derive(Debug, Clone)]
pub struct PagePool {
    base: u64,
    npages: u64,
    used: Vec<u64>,
    free: u64,
    cursor: u64,
}

impl PagePool {
    /// A pool of `npages` free pages starting at `base` (page aligned).
    pub fn new(base: u64, npages: u64) -> Self {
        PagePool {
            base,
            npages,
            used: vec![0; npages.div_ceil(64) as usize],
            free: npages,
            cursor: 0,
        }
    }

    /// First address of the pool.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// One past the last address of the pool.
    pub fn end(&self) -> u64 {
        self.base + self.npages * PAGE_SIZE
    }

    /// Number of free pages.
    pub fn free_pages(&self) -> u64 {
        self.free
    }

    /// Whether the page with address `gpa` is in this pool.
    pub fn contains(&self, gpa: u64) -> bool {
        gpa >= self.base && gpa < self.end()
    }

    fn is_used(&self, i: u64) -> bool {
        self.used[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    fn set(&mut self, i: u64, used: bool) {
        let w = &mut self.used[(i / 64) as usize];
        let bit = 1u64 << (i % 64);
        if used && *w & bit == 0 {
            *w |= bit;
            self.free -= 1;
        } else if !used && *w & bit != 0 {
            *w &= !bit;
            self.free += 1;
        }
    }

    /// Allocates `n` contiguous pages (next fit); returns the first address.
    pub fn alloc_contiguous(&mut self, n: u64) -> Option<u64> {
        if n == 0 || n > self.free {
            return None;
        }
        // Two passes: from the cursor to the end, then from the start.
        for (from, to) in [(self.cursor, self.npages), (0, self.npages)] {
            let mut run = 0;
            let mut i = from;
            while i < to {
                if self.is_used(i) {
                    run = 0;
                } else {
                    run += 1;
                    if run == n {
                        let first = i + 1 - n;
                        for p in first..=i {
                            self.set(p, true);
                        }
                        self.cursor = (i + 1) % self.npages.max(1);
                        return Some(self.base + first * PAGE_SIZE);
                    }
                }
                i += 1;
            }
        }
        None
    }

    /// Marks pages `[gpa, gpa + n pages)` used if they all are free.
    pub fn alloc_at(&mut self, gpa: u64, n: u64) -> bool {
        if !gpa.is_multiple_of(PAGE_SIZE) || !self.contains(gpa) {
            return false;
        }
        let first = (gpa - self.base) / PAGE_SIZE;
        if first + n > self.npages || (first..first + n).any(|i| self.is_used(i)) {
            return false;
        }
        for i in first..first + n {
            self.set(i, true);
        }
        true
    }

    /// Allocates the first free page at or after page index `start`
    /// (wrapping), avoiding pages in `avoid` if possible.
    fn alloc_near(&mut self, start: u64, avoid: &HashSet<u64>) -> Option<u64> {
        if self.free == 0 {
            return None;
        }
        let mut fallback = None;
        for k in 0..self.npages {
            let i = (start + k) % self.npages;
            if self.is_used(i) {
                continue;
            }
            let a = self.base + i * PAGE_SIZE;
            if avoid.contains(&a) {
                fallback.get_or_insert(i);
                continue;
            }
            self.set(i, true);
            return Some(a);
        }
        let i = fallback?;
        self.set(i, true);
        Some(self.base + i * PAGE_SIZE)
    }

    /// Frees the page at `gpa`; pages outside the pool are ignored.
    pub fn free_page(&mut self, gpa: u64) {
        if self.contains(gpa) {
            self.set((gpa - self.base) / PAGE_SIZE, false);
        }
    }
}

struct Region {
    spec: RegionSpec,
    pool: PagePool,
    region: Arc<GuestRegionMmap>,
}

/// Guest RAM shared with the backend.
pub struct GuestRam {
    mem: GuestMemoryMmap,
    regions: Vec<Region>,
    /// The random choices of [`Placement::Scattered`].
    rng: Rng,
}

impl std::fmt::Debug for GuestRam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestRam")
            .field("regions", &self.regions())
            .field("free_pages", &self.free_pages())
            .finish()
    }
}

fn create_region(spec: RegionSpec) -> Result<Arc<GuestRegionMmap>> {
    if spec.size == 0 || !spec.gpa.is_multiple_of(PAGE_SIZE) || !spec.size.is_multiple_of(PAGE_SIZE)
    {
        return Err(Error::Region(format!(
            "{spec:?}: base and size must be non-zero multiples of {PAGE_SIZE}"
        )));
    }
    spec.gpa
        .checked_add(spec.size)
        .ok_or_else(|| Error::Region(format!("{spec:?} overflows")))?;
    let fd = memfd_create(c"gpuswap-guest-ram", MFdFlags::MFD_CLOEXEC)
        .map_err(Error::nix("memfd_create"))?;
    let file = File::from(fd);
    file.set_len(spec.size)
        .map_err(Error::io("ftruncate memfd"))?;
    let size =
        usize::try_from(spec.size).map_err(|_| Error::Region(format!("{spec:?} too large")))?;
    let region =
        GuestRegionMmap::from_range(GuestAddress(spec.gpa), size, Some(FileOffset::new(file, 0)))
            .map_err(|e| Error::Memory(format!("mapping {spec:?}: {e}")))?;
    Ok(Arc::new(region))
}

impl GuestRam {
    /// Creates guest RAM with these regions (need not be sorted, must not
    /// overlap).
    pub fn new(specs: &[RegionSpec]) -> Result<Self> {
        if specs.is_empty() {
            return Err(Error::Region("no regions".into()));
        }
        let mut regions = Vec::new();
        for &spec in specs {
            regions.push(Region {
                spec,
                pool: PagePool::new(spec.gpa, spec.size / PAGE_SIZE),
                region: create_region(spec)?,
            });
        }
        regions.sort_by_key(|r| r.spec.gpa);
        let mem =
            GuestMemoryMmap::from_arc_regions(regions.iter().map(|r| r.region.clone()).collect())
                .map_err(|e| Error::Region(format!("{specs:?}: {e}")))?;
        Ok(GuestRam {
            mem,
            regions,
            rng: Rng::new(0),
        })
    }

    /// Seeds the random choices of [`Placement::Scattered`].
    pub fn seed(&mut self, seed: u64) {
        self.rng = Rng::new(seed);
    }

    /// The guest memory, for direct vm-memory access.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The current regions, sorted by address.
    pub fn regions(&self) -> Vec<RegionSpec> {
        self.regions.iter().map(|r| r.spec).collect()
    }

    /// Total free pages over all regions.
    pub fn free_pages(&self) -> u64 {
        self.regions.iter().map(|r| r.pool.free_pages()).sum()
    }

    /// vhost-user descriptions of all regions (file descriptors stay owned
    /// by `self`).
    pub(crate) fn region_infos(&self) -> Vec<VhostUserMemoryRegionInfo> {
        self.regions
            .iter()
            .map(|r| region_info(&r.region))
            .collect()
    }

    pub(crate) fn region_info_at(&self, gpa: u64) -> Option<VhostUserMemoryRegionInfo> {
        self.regions
            .iter()
            .find(|r| r.spec.gpa == gpa)
            .map(|r| region_info(&r.region))
    }

    /// Host virtual address of `gpa` in this process (for vring addresses).
    pub(crate) fn host_address(&self, gpa: u64) -> Result<u64> {
        self.mem
            .get_host_address(GuestAddress(gpa))
            .map(|p| p as u64)
            .map_err(|e| Error::Memory(format!("{gpa:#x}: {e}")))
    }

    /// Adds a region. The backend is not told; use
    /// [`crate::GpuFrontend::add_region`] for that.
    pub fn add_region(&mut self, spec: RegionSpec) -> Result<()> {
        if self
            .regions
            .iter()
            .any(|r| r.spec.gpa < spec.end() && spec.gpa < r.spec.end())
        {
            return Err(Error::Region(format!(
                "{spec:?} overlaps an existing region"
            )));
        }
        let region = create_region(spec)?;
        let mem = self
            .mem
            .insert_region(region.clone())
            .map_err(|e| Error::Region(format!("{spec:?}: {e}")))?;
        self.mem = mem;
        self.regions.push(Region {
            spec,
            pool: PagePool::new(spec.gpa, spec.size / PAGE_SIZE),
            region,
        });
        self.regions.sort_by_key(|r| r.spec.gpa);
        Ok(())
    }

    /// Removes the region starting at `gpa` and unmaps it. Outstanding
    /// [`Pages`] in it become dangling guest addresses (freeing them is a
    /// no-op), which is what tests of stale backings want.
    pub fn remove_region(&mut self, gpa: u64) -> Result<RegionSpec> {
        let idx = self
            .regions
            .iter()
            .position(|r| r.spec.gpa == gpa)
            .ok_or_else(|| Error::Region(format!("no region at {gpa:#x}")))?;
        if self.regions.len() == 1 {
            return Err(Error::Region("cannot remove the last region".into()));
        }
        let spec = self.regions[idx].spec;
        let (mem, _) = self
            .mem
            .remove_region(GuestAddress(spec.gpa), spec.size)
            .map_err(|e| Error::Region(format!("{spec:?}: {e}")))?;
        self.mem = mem;
        self.regions.remove(idx);
        Ok(spec)
    }

    /// Takes `n` pages at `gpa` out of the allocator for good (rings, bounce
    /// buffers).
    pub(crate) fn reserve(&mut self, gpa: u64, n: u64) -> Result<()> {
        self.alloc(n as usize, Placement::At(gpa)).map(|_| ())
    }

    /// Allocates `n` pages from any region.
    pub fn alloc(&mut self, n: usize, placement: Placement) -> Result<Pages> {
        self.alloc_filtered(n, placement, None)
    }

    /// Allocates `n` pages from the region starting at `region_gpa`.
    pub fn alloc_in(&mut self, region_gpa: u64, n: usize, placement: Placement) -> Result<Pages> {
        if !self.regions.iter().any(|r| r.spec.gpa == region_gpa) {
            return Err(Error::Region(format!("no region at {region_gpa:#x}")));
        }
        self.alloc_filtered(n, placement, Some(region_gpa))
    }

    fn alloc_filtered(
        &mut self,
        n: usize,
        placement: Placement,
        only: Option<u64>,
    ) -> Result<Pages> {
        let n64 = n as u64;
        let free: u64 = self
            .regions
            .iter()
            .filter(|r| only.is_none_or(|g| r.spec.gpa == g))
            .map(|r| r.pool.free_pages())
            .sum();
        let out_of_pages = || Error::OutOfPages {
            wanted: n64,
            free,
            placement: placement.name(),
        };
        if n == 0 {
            return Ok(Pages::default());
        }
        match placement {
            Placement::Contiguous => {
                for r in self
                    .regions
                    .iter_mut()
                    .filter(|r| only.is_none_or(|g| r.spec.gpa == g))
                {
                    if let Some(first) = r.pool.alloc_contiguous(n64) {
                        return Ok(Pages {
                            addrs: (0..n64).map(|i| first + i * PAGE_SIZE).collect(),
                        });
                    }
                }
                Err(out_of_pages())
            }
            Placement::At(gpa) => {
                if !gpa.is_multiple_of(PAGE_SIZE) {
                    return Err(Error::Region(format!("{gpa:#x} is not page aligned")));
                }
                let addrs: Vec<u64> = (0..n64).map(|i| gpa + i * PAGE_SIZE).collect();
                // All pages must be free and inside (possibly adjacent) regions.
                let mut ok = true;
                for &a in &addrs {
                    match self.regions.iter().find(|r| r.spec.contains(a)) {
                        Some(r) if only.is_none_or(|g| r.spec.gpa == g) => {
                            if r.pool.is_used((a - r.pool.base()) / PAGE_SIZE) {
                                ok = false;
                            }
                        }
                        _ => ok = false,
                    }
                }
                if !ok {
                    return Err(out_of_pages());
                }
                for &a in &addrs {
                    if let Some(r) = self.regions.iter_mut().find(|r| r.spec.contains(a)) {
                        r.pool.alloc_at(a, 1);
                    }
                }
                Ok(Pages { addrs })
            }
            Placement::Scattered => {
                if free < n64 {
                    return Err(out_of_pages());
                }
                let mut addrs = Vec::with_capacity(n);
                let mut avoid = HashSet::new();
                for _ in 0..n {
                    // Pick a region weighted by its free pages, then a random
                    // start page inside it.
                    let free_now: u64 = self
                        .regions
                        .iter()
                        .filter(|r| only.is_none_or(|g| r.spec.gpa == g))
                        .map(|r| r.pool.free_pages())
                        .sum();
                    let mut pick = self.rng.below(free_now);
                    let start = self.rng.next_u64();
                    let mut got = None;
                    for r in self
                        .regions
                        .iter_mut()
                        .filter(|r| only.is_none_or(|g| r.spec.gpa == g))
                    {
                        let f = r.pool.free_pages();
                        if pick >= f {
                            pick -= f;
                            continue;
                        }
                        got = r.pool.alloc_near(start % r.pool.npages.max(1), &avoid);
                        break;
                    }
                    let Some(a) = got else {
                        // Undo and report.
                        self.free_addrs(&addrs);
                        return Err(out_of_pages());
                    };
                    avoid.insert(a.wrapping_sub(PAGE_SIZE));
                    avoid.insert(a + PAGE_SIZE);
                    addrs.push(a);
                }
                Ok(Pages { addrs })
            }
        }
    }

    /// Returns pages to the allocator.
    pub fn free(&mut self, pages: &Pages) {
        self.free_addrs(&pages.addrs);
    }

    fn free_addrs(&mut self, addrs: &[u64]) {
        for &a in addrs {
            if let Some(r) = self.regions.iter_mut().find(|r| r.pool.contains(a)) {
                r.pool.free_page(a);
            }
        }
    }

    /// Writes `data` at guest address `gpa` (may span adjacent regions).
    pub fn write(&self, gpa: u64, data: &[u8]) -> Result<()> {
        self.mem
            .write_slice(data, GuestAddress(gpa))
            .map_err(|e| Error::Memory(format!("write {} bytes at {gpa:#x}: {e}", data.len())))
    }

    /// Reads `buf.len()` bytes at guest address `gpa`.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<()> {
        self.mem
            .read_slice(buf, GuestAddress(gpa))
            .map_err(|e| Error::Memory(format!("read {} bytes at {gpa:#x}: {e}", buf.len())))
    }

    /// Fills `len` bytes at `gpa` with `byte`.
    pub fn fill(&self, gpa: u64, len: usize, byte: u8) -> Result<()> {
        self.write(gpa, &vec![byte; len])
    }

    /// Writes `data` into the buffer described by `entries` (scatter), from
    /// byte `offset` of that buffer.
    pub fn write_entries(&self, entries: &[MemEntry], offset: u64, data: &[u8]) -> Result<()> {
        let mut done = 0usize;
        for (gpa, len) in Self::walk(entries, offset, data.len())? {
            self.write(gpa, &data[done..done + len])?;
            done += len;
        }
        Ok(())
    }

    /// Reads from the buffer described by `entries` (gather), from byte
    /// `offset` of that buffer.
    pub fn read_entries(&self, entries: &[MemEntry], offset: u64, buf: &mut [u8]) -> Result<()> {
        let total = buf.len();
        let mut done = 0usize;
        for (gpa, len) in Self::walk(entries, offset, total)? {
            self.read(gpa, &mut buf[done..done + len])?;
            done += len;
        }
        Ok(())
    }

    /// Splits `[offset, offset + len)` of the buffer described by
    /// `entries` into guest extents.
    fn walk(entries: &[MemEntry], mut offset: u64, len: usize) -> Result<Vec<(u64, usize)>> {
        let mut left = len;
        let mut out = Vec::new();
        for e in entries {
            if left == 0 {
                break;
            }
            let elen = u64::from(e.length);
            if offset >= elen {
                offset -= elen;
                continue;
            }
            let n = ((elen - offset) as usize).min(left);
            out.push((e.addr + offset, n));
            offset = 0;
            left -= n;
        }
        if left != 0 {
            return Err(Error::Memory(format!(
                "{len} bytes do not fit in {} entries",
                entries.len()
            )));
        }
        Ok(out)
    }
}

fn region_info(region: &GuestRegionMmap) -> VhostUserMemoryRegionInfo {
    let fo = region.file_offset();
    VhostUserMemoryRegionInfo {
        guest_phys_addr: region.start_addr().0,
        memory_size: region.len(),
        userspace_addr: region.as_ptr() as u64,
        mmap_offset: fo.map_or(0, |f| f.start()),
        mmap_handle: fo.map_or(-1, |f| f.file().as_raw_fd()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ram() -> GuestRam {
        GuestRam::new(&[
            RegionSpec::new(0, 64 * PAGE_SIZE),
            RegionSpec::new(1 << 32, 16 * PAGE_SIZE),
        ])
        .unwrap()
    }

    #[test]
    fn contiguous_is_one_entry() {
        let mut r = ram();
        let p = r.alloc(8, Placement::Contiguous).unwrap();
        assert_eq!(p.entries().len(), 1);
        assert_eq!(p.entries()[0].length as u64, 8 * PAGE_SIZE);
        assert_eq!(p.page_entries().len(), 8);
    }

    #[test]
    fn scattered_pages_are_distinct_and_not_adjacent() {
        let mut r = ram();
        let p = r.alloc(10, Placement::Scattered).unwrap();
        let set: HashSet<u64> = p.addrs().iter().copied().collect();
        assert_eq!(set.len(), 10);
        assert_eq!(p.entries().len(), 10);
        let q = r.alloc(10, Placement::Scattered).unwrap();
        assert!(q.addrs().iter().all(|a| !set.contains(a)));
        assert_eq!(r.free_pages(), 80 - 20);
        r.free(&p);
        r.free(&q);
        assert_eq!(r.free_pages(), 80);
    }

    #[test]
    fn exhaustion_is_an_error() {
        let mut r = ram();
        assert!(r.alloc(81, Placement::Scattered).is_err());
        assert!(r.alloc(65, Placement::Contiguous).is_err());
        let all = r.alloc(80, Placement::Scattered).unwrap();
        assert_eq!(r.free_pages(), 0);
        r.free(&all);
        assert!(r.alloc(64, Placement::Contiguous).is_ok());
    }

    #[test]
    fn at_spans_adjacent_regions() {
        let mut r = GuestRam::new(&[
            RegionSpec::new(0, 4 * PAGE_SIZE),
            RegionSpec::new(4 * PAGE_SIZE, 4 * PAGE_SIZE),
        ])
        .unwrap();
        let p = r.alloc(2, Placement::At(3 * PAGE_SIZE)).unwrap();
        assert_eq!(p.entries().len(), 1);
        r.write_entries(&p.entries(), 0, &[7u8; 8192]).unwrap();
        let mut buf = [0u8; 8192];
        r.read(3 * PAGE_SIZE, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 7));
        assert!(r.alloc(1, Placement::At(3 * PAGE_SIZE)).is_err());
    }

    #[test]
    fn scatter_gather_round_trip() {
        let mut r = ram();
        let p = r.alloc(3, Placement::Scattered).unwrap();
        let data: Vec<u8> = (0..3 * PAGE_SIZE as usize).map(|i| (i * 7) as u8).collect();
        r.write_entries(&p.entries(), 0, &data).unwrap();
        let mut back = vec![0u8; data.len() - 100];
        r.read_entries(&p.entries(), 100, &mut back).unwrap();
        assert_eq!(&back[..], &data[100..]);
        assert!(r
            .read_entries(&p.entries(), 1, &mut vec![0; data.len()])
            .is_err());
    }

    #[test]
    fn regions_come_and_go() {
        let mut r = ram();
        r.add_region(RegionSpec::new(1 << 33, 4 * PAGE_SIZE))
            .unwrap();
        assert!(r.add_region(RegionSpec::new(1 << 33, PAGE_SIZE)).is_err());
        let p = r.alloc_in(1 << 33, 4, Placement::Contiguous).unwrap();
        r.write(1 << 33, b"hi").unwrap();
        r.remove_region(1 << 33).unwrap();
        assert!(r.write(1 << 33, b"hi").is_err());
        r.free(&p);
        assert_eq!(r.regions().len(), 2);
    }
}
