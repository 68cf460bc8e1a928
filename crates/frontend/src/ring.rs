//! The driver side of a split virtqueue (virtio 1.x, section 2.7) laid out in
//! guest memory: descriptor table, available ring and used ring.
//!
//! No indirect descriptors and no `VIRTIO_RING_F_EVENT_IDX`: every chain is
//! published with a notification, and the device is expected to signal
//! every completion. Whatever the device writes into the used ring is
//! validated before it is trusted.

use std::sync::atomic::Ordering;

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::error::{Error, Result};

/// `VRING_DESC_F_NEXT`.
pub const DESC_F_NEXT: u16 = 1;
/// `VRING_DESC_F_WRITE`: the device writes this buffer.
pub const DESC_F_WRITE: u16 = 2;
/// `VRING_DESC_F_INDIRECT` (never negotiated; only for hostile chains).
pub const DESC_F_INDIRECT: u16 = 4;

/// One descriptor of an explicitly built chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawDesc {
    /// Guest-physical address of the buffer (need not be valid).
    pub addr: u64,
    /// Length of the buffer.
    pub len: u32,
    /// Whether the device may write the buffer.
    pub writable: bool,
    /// Extra flag bits ORed in (e.g. [`DESC_F_INDIRECT`]); `NEXT` and
    /// `WRITE` are set by the ring.
    pub extra_flags: u16,
}

impl RawDesc {
    /// A device-readable buffer.
    pub const fn readable(addr: u64, len: u32) -> Self {
        RawDesc {
            addr,
            len,
            writable: false,
            extra_flags: 0,
        }
    }

    /// A device-writable buffer.
    pub const fn writable(addr: u64, len: u32) -> Self {
        RawDesc {
            addr,
            len,
            writable: true,
            extra_flags: 0,
        }
    }
}

/// One entry the device put in the used ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsedElem {
    /// Head descriptor index of the completed chain.
    pub head: u16,
    /// Bytes the device says it wrote.
    pub len: u32,
}

/// Guest addresses of the three parts of a split ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingLayout {
    /// Queue size (power of two).
    pub size: u16,
    /// Descriptor table.
    pub desc: u64,
    /// Available ring.
    pub avail: u64,
    /// Used ring.
    pub used: u64,
}

impl RingLayout {
    /// Lays a ring of `size` entries out from `base`: descriptor table,
    /// available ring, then the used ring at the next 4-byte boundary.
    /// Returns the layout and the bytes it spans.
    pub fn at(base: u64, size: u16) -> (RingLayout, u64) {
        let n = u64::from(size);
        let desc = base;
        let avail = desc + 16 * n;
        let avail_len = 6 + 2 * n;
        let used = (avail + avail_len).next_multiple_of(4);
        let used_len = 6 + 8 * n;
        (
            RingLayout {
                size,
                desc,
                avail,
                used,
            },
            used + used_len - base,
        )
    }
}

/// Driver side of one split virtqueue.
#[derive(Debug)]
pub struct SplitRing {
    layout: RingLayout,
    free: Vec<u16>,
    /// Chain descriptors by head index, for chains the device owns.
    in_flight: Vec<Option<Vec<u16>>>,
    n_in_flight: usize,
    next_avail: u16,
    last_used: u16,
}

impl SplitRing {
    /// A ring with this layout. Call [`SplitRing::init`] before use.
    pub fn new(layout: RingLayout) -> Result<Self> {
        if layout.size == 0 || !layout.size.is_power_of_two() || layout.size > 32768 {
            return Err(Error::InvalidChain(
                "queue size must be a power of two <= 32768",
            ));
        }
        let mut r = SplitRing {
            layout,
            free: Vec::new(),
            in_flight: Vec::new(),
            n_in_flight: 0,
            next_avail: 0,
            last_used: 0,
        };
        r.forget_all();
        Ok(r)
    }

    /// The ring's layout.
    pub fn layout(&self) -> RingLayout {
        self.layout
    }

    /// Forgets every chain in flight and restarts the indices at 0 (the
    /// device must have been stopped).
    pub fn forget_all(&mut self) {
        let n = self.layout.size;
        self.free = (0..n).rev().collect();
        self.in_flight = vec![None; n as usize];
        self.n_in_flight = 0;
        self.next_avail = 0;
        self.last_used = 0;
    }

    /// Zeroes the ring memory and forgets everything in flight.
    pub fn init(&mut self, mem: &GuestMemoryMmap) -> Result<()> {
        self.forget_all();
        let (_, len) = RingLayout::at(self.layout.desc, self.layout.size);
        let contiguous = self.layout.avail == self.layout.desc + 16 * u64::from(self.layout.size);
        if contiguous {
            write(mem, self.layout.desc, &vec![0u8; len as usize])?;
        } else {
            let n = u64::from(self.layout.size);
            write(mem, self.layout.desc, &vec![0u8; (16 * n) as usize])?;
            write(mem, self.layout.avail, &vec![0u8; (6 + 2 * n) as usize])?;
            write(mem, self.layout.used, &vec![0u8; (6 + 8 * n) as usize])?;
        }
        Ok(())
    }

    /// Free descriptors.
    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    /// Chains the device owns.
    pub fn in_flight(&self) -> usize {
        self.n_in_flight
    }

    /// The next available index the driver will publish.
    pub fn next_avail(&self) -> u16 {
        self.next_avail
    }

    /// Writes a chain and publishes it in the available ring; returns its
    /// head index. The caller notifies the device.
    pub fn add_chain(&mut self, mem: &GuestMemoryMmap, descs: &[RawDesc]) -> Result<u16> {
        if descs.is_empty() {
            return Err(Error::InvalidChain("empty chain"));
        }
        if descs.len() > self.free.len() {
            return Err(Error::InvalidChain("more descriptors than are free"));
        }
        let idxs: Vec<u16> = (0..descs.len())
            .map(|_| self.free.pop().unwrap_or(0))
            .collect();
        for (i, d) in descs.iter().enumerate() {
            let mut flags = d.extra_flags & !(DESC_F_NEXT | DESC_F_WRITE);
            if d.writable {
                flags |= DESC_F_WRITE;
            }
            let next = if i + 1 < idxs.len() {
                flags |= DESC_F_NEXT;
                idxs[i + 1]
            } else {
                0
            };
            let desc = Descriptor::new(d.addr, d.len, flags, next);
            let at = self.layout.desc + 16 * u64::from(idxs[i]);
            if let Err(e) = mem.write_obj(desc, GuestAddress(at)) {
                self.free.extend(idxs.iter().rev());
                return Err(Error::Memory(format!("descriptor at {at:#x}: {e}")));
            }
        }
        let head = idxs[0];
        let slot = u64::from(self.next_avail % self.layout.size);
        let ring_at = self.layout.avail + 4 + 2 * slot;
        let publish = mem
            .store(head, GuestAddress(ring_at), Ordering::Release)
            .and_then(|_| {
                mem.store(
                    self.next_avail.wrapping_add(1),
                    GuestAddress(self.layout.avail + 2),
                    Ordering::Release,
                )
            });
        if let Err(e) = publish {
            self.free.extend(idxs.iter().rev());
            return Err(Error::Memory(format!("available ring: {e}")));
        }
        self.next_avail = self.next_avail.wrapping_add(1);
        self.in_flight[head as usize] = Some(idxs);
        self.n_in_flight += 1;
        Ok(head)
    }

    /// Takes the next entry from the used ring, if any, and frees its
    /// descriptors. Entries that name no chain in flight, or a used index
    /// running ahead of what was published, are backend errors.
    pub fn pop_used(&mut self, mem: &GuestMemoryMmap) -> Result<Option<UsedElem>> {
        let used_idx: u16 = mem
            .load(GuestAddress(self.layout.used + 2), Ordering::Acquire)
            .map_err(|e| Error::Memory(format!("used index: {e}")))?;
        let pending = used_idx.wrapping_sub(self.last_used) as usize;
        if pending == 0 {
            return Ok(None);
        }
        if pending > self.n_in_flight {
            return Err(Error::Backend(format!(
                "used index {used_idx} is {pending} ahead of {} but only {} chains are in flight",
                self.last_used, self.n_in_flight
            )));
        }
        let slot = u64::from(self.last_used % self.layout.size);
        let at = self.layout.used + 4 + 8 * slot;
        let id: u32 = mem
            .load(GuestAddress(at), Ordering::Acquire)
            .map_err(|e| Error::Memory(format!("used element: {e}")))?;
        let len: u32 = mem
            .load(GuestAddress(at + 4), Ordering::Acquire)
            .map_err(|e| Error::Memory(format!("used element: {e}")))?;
        self.last_used = self.last_used.wrapping_add(1);
        let chain = usize::try_from(id)
            .ok()
            .and_then(|i| self.in_flight.get_mut(i))
            .and_then(Option::take);
        let Some(chain) = chain else {
            return Err(Error::Backend(format!(
                "used element names descriptor {id}, which heads no chain in flight"
            )));
        };
        self.free.extend(chain.iter().rev());
        self.n_in_flight -= 1;
        Ok(Some(UsedElem {
            head: id as u16,
            len,
        }))
    }
}

fn write(mem: &GuestMemoryMmap, gpa: u64, data: &[u8]) -> Result<()> {
    mem.write_slice(data, GuestAddress(gpa))
        .map_err(|e| Error::Memory(format!("ring at {gpa:#x}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    /// Plays the device: takes avail entry `i` and completes it with `len`.
    fn device_complete(mem: &GuestMemoryMmap, l: &RingLayout, used_idx: u16, head: u32, len: u32) {
        let slot = u64::from(used_idx % l.size);
        mem.write_obj(head, GuestAddress(l.used + 4 + 8 * slot))
            .unwrap();
        mem.write_obj(len, GuestAddress(l.used + 8 + 8 * slot))
            .unwrap();
        mem.write_obj(used_idx.wrapping_add(1), GuestAddress(l.used + 2))
            .unwrap();
    }

    #[test]
    fn chain_round_trip() {
        let m = mem();
        let (l, len) = RingLayout::at(0x1000, 4);
        assert!(len < 0x1000);
        let mut r = SplitRing::new(l).unwrap();
        r.init(&m).unwrap();
        let head = r
            .add_chain(
                &m,
                &[RawDesc::readable(0x8000, 24), RawDesc::writable(0x9000, 24)],
            )
            .unwrap();
        assert_eq!(r.num_free(), 2);
        let avail_idx: u16 = m.read_obj(GuestAddress(l.avail + 2)).unwrap();
        assert_eq!(avail_idx, 1);
        let d: Descriptor = m
            .read_obj(GuestAddress(l.desc + 16 * u64::from(head)))
            .unwrap();
        assert!(d.has_next());
        assert!(!d.is_write_only());
        let d2: Descriptor = m
            .read_obj(GuestAddress(l.desc + 16 * u64::from(d.next())))
            .unwrap();
        assert!(d2.is_write_only() && !d2.has_next());
        assert_eq!(r.pop_used(&m).unwrap(), None);
        device_complete(&m, &l, 0, u32::from(head), 24);
        assert_eq!(r.pop_used(&m).unwrap(), Some(UsedElem { head, len: 24 }));
        assert_eq!(r.num_free(), 4);
        assert_eq!(r.in_flight(), 0);
    }

    #[test]
    fn full_ring_and_bogus_used_are_errors() {
        let m = mem();
        let (l, _) = RingLayout::at(0x1000, 2);
        let mut r = SplitRing::new(l).unwrap();
        r.init(&m).unwrap();
        r.add_chain(&m, &[RawDesc::readable(0, 1), RawDesc::readable(0, 1)])
            .unwrap();
        assert!(matches!(
            r.add_chain(&m, &[RawDesc::readable(0, 1)]),
            Err(Error::InvalidChain(_))
        ));
        assert!(r.add_chain(&m, &[]).is_err());
        device_complete(&m, &l, 0, 7, 0);
        assert!(matches!(r.pop_used(&m), Err(Error::Backend(_))));
        // Used index jumping ahead.
        m.write_obj(5u16, GuestAddress(l.used + 2)).unwrap();
        assert!(matches!(r.pop_used(&m), Err(Error::Backend(_))));
    }
}
