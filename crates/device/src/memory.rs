//! Guest memory: turning a backing's guest addresses into host iovecs,
//! hashing what a backing holds, and tracking which resource owns each
//! guest page so overlapping backings are caught.
//!
//! Backings are stored as guest addresses and resolved again whenever the
//! memory table changes; host pointers are never kept across a change.

use std::collections::BTreeMap;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, VolatileSlice};
use xxhash_rust::xxh3::Xxh3;

use crate::renderer::HostIovec;

/// Guest page size used for ownership tracking.
pub const PAGE_SIZE: u64 = 4096;

/// One guest-physical extent of a backing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestExtent {
    pub addr: u64,
    pub len: u32,
}

impl GuestExtent {
    fn end(&self) -> u64 {
        // Cannot overflow: `validate` rejects extents that wrap.
        self.addr + u64::from(self.len)
    }
}

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

/// Checks entries for zero lengths and address wrap-around.
pub fn validate(extents: &[GuestExtent]) -> Result<u64, BackingError> {
    let mut total = 0u64;
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
        total += u64::from(e.len);
    }
    Ok(total)
}

/// Resolves extents to host iovecs in `mem`, splitting extents that cross
/// memory regions and merging neighbours that are contiguous on the host.
pub fn resolve<M: GuestMemoryBackend>(
    mem: &M,
    extents: &[GuestExtent],
) -> Result<Vec<HostIovec>, BackingError> {
    let mut iovecs: Vec<HostIovec> = Vec::with_capacity(extents.len());
    for (index, e) in extents.iter().enumerate() {
        let outside = || BackingError::OutsideGuestRam {
            index,
            addr: e.addr,
            len: e.len,
        };
        let mut covered = 0usize;
        for slice in mem.get_slices(GuestAddress(e.addr), e.len as usize) {
            let slice = slice.map_err(|_| outside())?;
            let base = slice.ptr_guard_mut().as_ptr();
            let len = slice.len();
            covered += len;
            match iovecs.last_mut() {
                // SAFETY: only computes the one-past-the-end address of
                // an iovec inside a mapped guest region; nothing is read.
                Some(last) if unsafe { last.base.add(last.len) } == base => last.len += len,
                _ => iovecs.push(HostIovec { base, len }),
            }
        }
        if covered != e.len as usize {
            return Err(outside());
        }
    }
    Ok(iovecs)
}

/// Hashes the first `len` bytes of a backing with xxh3-64, reading guest
/// memory through volatile copies (the guest may be writing it).
pub fn hash_backing<M: GuestMemoryBackend>(
    mem: &M,
    extents: &[GuestExtent],
    len: u64,
) -> Result<u64, BackingError> {
    let mut hasher = Xxh3::new();
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
            hash_slice(&mut hasher, &slice, &mut bounce);
        }
        left -= take;
    }
    Ok(hasher.digest())
}

fn hash_slice<B: vm_memory::bitmap::BitmapSlice>(
    hasher: &mut Xxh3,
    slice: &VolatileSlice<B>,
    bounce: &mut [u8],
) {
    let mut offset = 0;
    while offset < slice.len() {
        let n = bounce.len().min(slice.len() - offset);
        // `offset + n <= slice.len()`, so the subslice always exists.
        if let Ok(part) = slice.subslice(offset, n) {
            part.copy_to(&mut bounce[..n]);
            hasher.update(&bounce[..n]);
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

/// Which live resource's backing covers each guest page.
///
/// Page granularity is exact for Linux guests, which back buffers with
/// whole pages; two resources sharing a page with disjoint byte ranges
/// would be reported too, and no known driver does that.
#[derive(Debug, Default)]
pub struct PageOwners {
    regions: Vec<RegionOwners>,
    /// Further owners of pages claimed by more than one live resource
    /// (only after an overlap violation), so that releasing the first
    /// owner does not hide an overlap between the ones still holding it.
    shared: BTreeMap<u64, Vec<u32>>,
}

#[derive(Debug)]
struct RegionOwners {
    start: u64,
    owners: Vec<u32>,
}

impl PageOwners {
    /// An empty map covering every region of `mem`.
    pub fn for_memory<M: GuestMemoryBackend>(mem: &M) -> Self {
        let mut regions: Vec<RegionOwners> = mem
            .iter()
            .map(|r| RegionOwners {
                start: r.start_addr().0 & !(PAGE_SIZE - 1),
                owners: vec![0; (r.len().div_ceil(PAGE_SIZE) + 1) as usize],
            })
            .collect();
        regions.sort_by_key(|r| r.start);
        PageOwners {
            regions,
            shared: BTreeMap::new(),
        }
    }

    fn slot(regions: &mut [RegionOwners], page_addr: u64) -> Option<&mut u32> {
        let i = regions.partition_point(|r| r.start <= page_addr);
        let region = regions.get_mut(i.checked_sub(1)?)?;
        let index = ((page_addr - region.start) / PAGE_SIZE) as usize;
        region.owners.get_mut(index)
    }

    /// Marks the pages of `extents` as owned by `id`. Returns the other
    /// live resources that already own one of those pages.
    pub fn claim(&mut self, id: u32, extents: &[GuestExtent]) -> Vec<u32> {
        let mut conflicts = Vec::new();
        for e in extents {
            let mut page = e.addr & !(PAGE_SIZE - 1);
            while page < e.end() {
                if let Some(owner) = Self::slot(&mut self.regions, page) {
                    if *owner == 0 {
                        *owner = id;
                    } else if *owner != id {
                        let others = self.shared.entry(page).or_default();
                        for &other in std::iter::once(&*owner).chain(others.iter()) {
                            if other != id && !conflicts.contains(&other) {
                                conflicts.push(other);
                            }
                        }
                        if !others.contains(&id) {
                            others.push(id);
                        }
                    }
                }
                page += PAGE_SIZE;
            }
        }
        conflicts
    }

    /// Releases the pages of `extents` that `id` owns; a page another
    /// resource also claimed passes to that one.
    pub fn release(&mut self, id: u32, extents: &[GuestExtent]) {
        for e in extents {
            let mut page = e.addr & !(PAGE_SIZE - 1);
            while page < e.end() {
                if let Some(owner) = Self::slot(&mut self.regions, page) {
                    if let Some(others) = self.shared.get_mut(&page) {
                        others.retain(|&o| o != id);
                        if *owner == id {
                            *owner = others.pop().unwrap_or(0);
                        }
                        if others.is_empty() {
                            self.shared.remove(&page);
                        }
                    } else if *owner == id {
                        *owner = 0;
                    }
                }
                page += PAGE_SIZE;
            }
        }
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

    #[test]
    fn backing_hash_follows_entry_order() {
        let mem = two_regions();
        mem.write_slice(&[1, 2, 3, 4], GuestAddress(0x3ffe))
            .unwrap();
        let extents = [GuestExtent {
            addr: 0x3ffe,
            len: 4,
        }];
        let expected = xxhash_rust::xxh3::xxh3_64(&[1, 2, 3, 4]);
        assert_eq!(hash_backing(&mem, &extents, 4).unwrap(), expected);
        assert_eq!(
            hash_backing(&mem, &extents, 2).unwrap(),
            xxhash_rust::xxh3::xxh3_64(&[1, 2])
        );
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
        assert!(owners.claim(1, &a).is_empty());
        assert_eq!(owners.claim(2, &b), vec![1]);
        owners.release(1, &a);
        assert!(owners.claim(2, &b).is_empty());
    }
}
