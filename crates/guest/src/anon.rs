//! A private anonymous memory mapping, unmapped when dropped: the memory
//! `touch` and `reclaim-bench` fault in, page out and read back.

use nix::libc;

use crate::error::{Error, Result};

pub struct AnonMap {
    base: *mut u8,
    len: usize,
}

impl AnonMap {
    /// Maps `len` bytes (not yet touched: no page is allocated).
    pub fn new(len: usize) -> Result<AnonMap> {
        if len == 0 {
            return Err(Error::msg("an anonymous mapping of 0 bytes"));
        }
        // SAFETY: a fresh private anonymous mapping; no existing memory is
        // affected, and the result is checked before use.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(Error::sys("mmap", nix::errno::Errno::last()));
        }
        Ok(AnonMap {
            base: base.cast(),
            len,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first byte, for volatile accesses that must fault pages in.
    pub fn as_ptr(&self) -> *mut u8 {
        self.base
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: the whole mapping, which lives as long as `self`; the
        // borrow of `self` makes it the only view.
        unsafe { std::slice::from_raw_parts_mut(self.base, self.len) }
    }

    /// Reclaims the whole mapping to swap now (`MADV_PAGEOUT`).
    pub fn pageout(&self) -> Result<()> {
        // SAFETY: advice on exactly our own mapping; it changes no content.
        let rc = unsafe { libc::madvise(self.base.cast(), self.len, libc::MADV_PAGEOUT) };
        if rc != 0 {
            return Err(Error::sys(
                "madvise(MADV_PAGEOUT)",
                nix::errno::Errno::last(),
            ));
        }
        Ok(())
    }
}

impl Drop for AnonMap {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`, which nothing
        // else uses any more.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}
