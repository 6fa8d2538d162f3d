//! Mapped shared memory: the one place (with the Xen ioctl module) where xenring
//! uses `unsafe`.
//!
//! A [`Region`] is a range of virtual memory that this process mapped and that
//! another domain (another process) may read and write at the same time. The
//! rules that make that sound enough for a hostile peer:
//!
//! * No Rust reference (`&[u8]`, `&T`) to shared bytes is ever handed out.
//!   Plain data is moved with [`Region::read`] and [`Region::write`], which copy
//!   between the region and private memory through raw pointers; whatever the
//!   peer does meanwhile can only change the bytes copied, never the copying.
//! * Fields that both sides update concurrently (ring indexes, grant flags,
//!   notify bytes) are only reached through [`Region::atomic_u32`] and friends,
//!   which hand out references to atomics. Atomics may be shared across
//!   processes: the hardware makes them coherent whatever maps them.
//! * Offsets come from the project's own layout constants, never from the peer:
//!   a peer-supplied index is masked or checked before it becomes an offset.
//!   An out-of-range or misaligned offset is a bug in xenring and panics.
//!
//! Regions are created by [`Region::anonymous`] (private pages),
//! [`Region::map_fd`] (a window of a memfd or device file) and
//! [`Region::map_pages_of`] (chosen pages of a file, made virtually contiguous:
//! how a multi-page grant mapping looks to the caller).
#![allow(unsafe_code)]

use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, AtomicU8};

use rustix::fs::{ftruncate, memfd_create, MemfdFlags};
use rustix::mm::{mmap, mmap_anonymous, munmap, MapFlags, ProtFlags};

/// Size of a Xen page, and of every page xenring maps.
pub const PAGE_SIZE: usize = 4096;

/// Errors from creating or mapping shared memory.
#[derive(Debug, thiserror::Error)]
pub enum ShmError {
    /// A system call failed.
    #[error("{what} failed: {source}")]
    Sys {
        /// The call that failed, with its arguments where they help.
        what: String,
        /// The errno it returned.
        #[source]
        source: std::io::Error,
    },
    /// A zero or non-page-multiple length was asked for.
    #[error("invalid region length {0}: must be a non-zero multiple of {PAGE_SIZE}")]
    BadLength(usize),
}

fn sys(what: impl Into<String>, e: rustix::io::Errno) -> ShmError {
    ShmError::Sys {
        what: what.into(),
        source: e.into(),
    }
}

/// Whether a mapping may be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protection {
    /// Read only: a store faults.
    ReadOnly,
    /// Read and write.
    ReadWrite,
}

impl Protection {
    fn prot(self) -> ProtFlags {
        match self {
            Protection::ReadOnly => ProtFlags::READ,
            Protection::ReadWrite => ProtFlags::READ | ProtFlags::WRITE,
        }
    }
}

/// A mapped range of memory, possibly shared with another process.
///
/// The mapping is removed when the region is dropped.
pub struct Region {
    ptr: NonNull<u8>,
    len: usize,
    prot: Protection,
}

// SAFETY: a Region is a plain address range; every access goes through raw
// pointers or atomics (see the module docs), so sharing it between threads is
// no different from sharing it with the other process.
unsafe impl Send for Region {}
// SAFETY: as for Send: no method hands out a non-atomic reference.
unsafe impl Sync for Region {}

impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Region")
            .field("ptr", &self.ptr)
            .field("len", &self.len)
            .field("prot", &self.prot)
            .finish()
    }
}

fn check_len(len: usize) -> Result<(), ShmError> {
    if len == 0 || len % PAGE_SIZE != 0 {
        return Err(ShmError::BadLength(len));
    }
    Ok(())
}

impl Region {
    /// Maps `len` bytes of private, zeroed, writable memory.
    pub fn anonymous(len: usize) -> Result<Region, ShmError> {
        check_len(len)?;
        // SAFETY: a fresh anonymous mapping at an address the kernel picks
        // cannot overlap any memory Rust already uses.
        let ptr = unsafe {
            mmap_anonymous(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE,
            )
        }
        .map_err(|e| sys(format!("mmap(anonymous, {len})"), e))?;
        Ok(Region {
            ptr: NonNull::new(ptr.cast()).expect("mmap returned null"),
            len,
            prot: Protection::ReadWrite,
        })
    }

    /// Maps `len` bytes of `fd` starting at byte `offset`, shared (stores are
    /// seen by every other mapping of the same file).
    pub fn map_fd(
        fd: BorrowedFd<'_>,
        offset: u64,
        len: usize,
        prot: Protection,
    ) -> Result<Region, ShmError> {
        check_len(len)?;
        // SAFETY: address chosen by the kernel, so no overlap with Rust memory;
        // the file's contents are only reached through raw pointers/atomics.
        let ptr = unsafe {
            mmap(
                std::ptr::null_mut(),
                len,
                prot.prot(),
                MapFlags::SHARED,
                fd,
                offset,
            )
        }
        .map_err(|e| sys(format!("mmap(fd, offset {offset:#x}, {len})"), e))?;
        Ok(Region {
            ptr: NonNull::new(ptr.cast()).expect("mmap returned null"),
            len,
            prot,
        })
    }

    /// Maps the pages `pages` (page numbers within `fd`) of `fd` one after the
    /// other into one virtually contiguous region. Runs of consecutive page
    /// numbers are mapped with one call each.
    pub fn map_pages_of(
        fd: BorrowedFd<'_>,
        pages: &[u64],
        prot: Protection,
    ) -> Result<Region, ShmError> {
        let len = pages.len() * PAGE_SIZE;
        check_len(len)?;
        // Reserve the whole range first so that the pieces land contiguously.
        // SAFETY: fresh PROT_NONE reservation at a kernel-chosen address.
        let base = unsafe {
            mmap_anonymous(
                std::ptr::null_mut(),
                len,
                ProtFlags::empty(),
                MapFlags::PRIVATE,
            )
        }
        .map_err(|e| sys(format!("mmap(reserve {len})"), e))?;
        let region = Region {
            ptr: NonNull::new(base.cast()).expect("mmap returned null"),
            len,
            prot,
        };
        let mut i = 0;
        while i < pages.len() {
            let mut run = 1;
            while i + run < pages.len() && pages[i + run] == pages[i] + run as u64 {
                run += 1;
            }
            let offset = pages[i] * PAGE_SIZE as u64;
            // SAFETY: the target range lies inside the reservation made above,
            // which this Region owns and nothing else refers to; MAP_FIXED
            // replaces only that reservation.
            unsafe {
                mmap(
                    region.ptr.as_ptr().add(i * PAGE_SIZE).cast(),
                    run * PAGE_SIZE,
                    prot.prot(),
                    MapFlags::SHARED | MapFlags::FIXED,
                    fd,
                    offset,
                )
            }
            .map_err(|e| sys(format!("mmap(fixed, page {:#x}, {run} pages)", pages[i]), e))?;
            i += run;
        }
        Ok(region)
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: regions are at least one page.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether stores are allowed.
    pub fn protection(&self) -> Protection {
        self.prot
    }

    /// The base address, for handing to the kernel (e.g. a grant-copy
    /// segment's virtual address). Never dereference it outside this module.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    fn check(&self, offset: usize, len: usize, align: usize) {
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= self.len),
            "shm access {offset}+{len} outside a region of {} bytes",
            self.len
        );
        assert!(
            offset % align == 0,
            "shm access at {offset} not aligned to {align}"
        );
    }

    fn check_writable(&self) {
        assert!(
            self.prot == Protection::ReadWrite,
            "store to a read-only shared region"
        );
    }

    /// Copies `buf.len()` bytes from the region at `offset` into `buf`.
    ///
    /// The peer may be writing the same bytes: the copy then holds some mix of
    /// old and new bytes, which the caller validates (it is private now).
    ///
    /// # Panics
    /// If the range is outside the region (a bug in xenring, not the peer).
    pub fn read(&self, offset: usize, buf: &mut [u8]) {
        self.check(offset, buf.len(), 1);
        // SAFETY: the source range is inside the mapping (checked); the
        // destination is a private buffer that cannot overlap a shared
        // mapping. The bytes may change concurrently, which only affects
        // their values: they are plain bytes with no validity invariant.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.as_ptr().add(offset),
                buf.as_mut_ptr(),
                buf.len(),
            )
        }
    }

    /// Copies `data` into the region at `offset`.
    ///
    /// # Panics
    /// If the range is outside the region or the region is read-only.
    pub fn write(&self, offset: usize, data: &[u8]) {
        self.check(offset, data.len(), 1);
        self.check_writable();
        // SAFETY: destination inside a writable mapping (checked); the source
        // is private memory. Concurrent readers on the other side see plain
        // bytes, possibly torn, which they validate.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.as_ptr().add(offset), data.len())
        }
    }

    /// Sets `len` bytes at `offset` to `byte`.
    pub fn fill(&self, offset: usize, len: usize, byte: u8) {
        self.check(offset, len, 1);
        self.check_writable();
        // SAFETY: range inside a writable mapping (checked).
        unsafe { std::ptr::write_bytes(self.ptr.as_ptr().add(offset), byte, len) }
    }

    /// Copies `len` bytes from `src` at `src_off` to `self` at `dst_off`.
    /// The two regions may be the same; overlapping ranges are allowed.
    pub fn copy_from(&self, dst_off: usize, src: &Region, src_off: usize, len: usize) {
        self.check(dst_off, len, 1);
        src.check(src_off, len, 1);
        self.check_writable();
        // SAFETY: both ranges are inside their mappings (checked); `copy`
        // allows overlap.
        unsafe {
            std::ptr::copy(
                src.ptr.as_ptr().add(src_off),
                self.ptr.as_ptr().add(dst_off),
                len,
            )
        }
    }

    /// The 8-bit atomic at `offset`.
    pub fn atomic_u8(&self, offset: usize) -> &AtomicU8 {
        self.check(offset, 1, 1);
        // SAFETY: in bounds and trivially aligned; AtomicU8 has the layout of
        // u8, and every access to it is atomic. The reference lives no longer
        // than the mapping (&self).
        unsafe { AtomicU8::from_ptr(self.ptr.as_ptr().add(offset)) }
    }

    /// The 16-bit atomic at `offset` (2-byte aligned).
    pub fn atomic_u16(&self, offset: usize) -> &AtomicU16 {
        self.check(offset, 2, 2);
        // SAFETY: in bounds and aligned (checked; mappings are page aligned).
        unsafe { AtomicU16::from_ptr(self.ptr.as_ptr().add(offset).cast()) }
    }

    /// The 32-bit atomic at `offset` (4-byte aligned).
    pub fn atomic_u32(&self, offset: usize) -> &AtomicU32 {
        self.check(offset, 4, 4);
        // SAFETY: in bounds and aligned (checked; mappings are page aligned).
        unsafe { AtomicU32::from_ptr(self.ptr.as_ptr().add(offset).cast()) }
    }

    /// The 64-bit atomic at `offset` (8-byte aligned).
    pub fn atomic_u64(&self, offset: usize) -> &AtomicU64 {
        self.check(offset, 8, 8);
        // SAFETY: in bounds and aligned (checked; mappings are page aligned).
        unsafe { AtomicU64::from_ptr(self.ptr.as_ptr().add(offset).cast()) }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: the range is exactly what this Region mapped, and no
        // reference into it outlives the Region (accessors borrow &self).
        if let Err(e) = unsafe { munmap(self.ptr.as_ptr().cast(), self.len) } {
            tracing::error!(len = self.len, error = %e, "munmap of a shared region failed");
        }
    }
}

/// Creates an anonymous memory file of `len` bytes (sparse: pages are only
/// allocated when touched), sealed against nothing, close-on-exec.
pub fn memfd(name: &str, len: u64) -> Result<OwnedFd, ShmError> {
    let fd = memfd_create(name, MemfdFlags::CLOEXEC)
        .map_err(|e| sys(format!("memfd_create({name})"), e))?;
    ftruncate(fd.as_fd(), len).map_err(|e| sys(format!("ftruncate({name}, {len})"), e))?;
    Ok(fd)
}

/// Registers `fd` with the current tokio runtime for readiness (the waiting
/// half of shared-memory signalling: eventfds and event-channel devices).
///
/// # Panics
/// Outside a tokio runtime (as tokio does).
pub fn register_async_fd(
    fd: OwnedFd,
    interest: tokio::io::Interest,
) -> std::io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd is a valid open descriptor that stays open, and
    // refers to the same open file description, until it is dropped; the
    // AsyncFd owns it, so that lasts the AsyncFd's whole life, and
    // `as_raw_fd` on an OwnedFd always returns that same descriptor.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, interest) }.map_err(|e| e.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn two_mappings_of_one_memfd_see_each_other() {
        let fd = memfd("t", 4 * PAGE_SIZE as u64).unwrap();
        let a = Region::map_fd(fd.as_fd(), 0, 2 * PAGE_SIZE, Protection::ReadWrite).unwrap();
        let b = Region::map_pages_of(fd.as_fd(), &[1, 0], Protection::ReadWrite).unwrap();
        a.write(10, b"hello");
        a.write(PAGE_SIZE + 3, b"world");
        let mut buf = [0u8; 5];
        b.read(PAGE_SIZE + 10, &mut buf);
        assert_eq!(&buf, b"hello");
        b.read(3, &mut buf);
        assert_eq!(&buf, b"world");
        a.atomic_u32(64).store(0xdead_beef, Ordering::Release);
        assert_eq!(
            b.atomic_u32(PAGE_SIZE + 64).load(Ordering::Acquire),
            0xdead_beef
        );
    }

    #[test]
    fn noncontiguous_pages_map_in_runs() {
        let fd = memfd("t", 8 * PAGE_SIZE as u64).unwrap();
        let all = Region::map_fd(fd.as_fd(), 0, 8 * PAGE_SIZE, Protection::ReadWrite).unwrap();
        for p in 0..8 {
            all.fill(p * PAGE_SIZE, PAGE_SIZE, p as u8);
        }
        let pages = [5u64, 6, 7, 2, 3, 0];
        let r = Region::map_pages_of(fd.as_fd(), &pages, Protection::ReadOnly).unwrap();
        for (i, p) in pages.iter().enumerate() {
            let mut b = [0u8; 1];
            r.read(i * PAGE_SIZE + 17, &mut b);
            assert_eq!(b[0], *p as u8);
        }
    }

    #[test]
    #[should_panic(expected = "outside a region")]
    fn out_of_bounds_access_panics() {
        let r = Region::anonymous(PAGE_SIZE).unwrap();
        r.atomic_u32(PAGE_SIZE - 2);
    }

    #[test]
    #[should_panic(expected = "read-only")]
    fn store_to_read_only_region_panics() {
        let fd = memfd("t", PAGE_SIZE as u64).unwrap();
        let r = Region::map_fd(fd.as_fd(), 0, PAGE_SIZE, Protection::ReadOnly).unwrap();
        r.write(0, b"x");
    }

    #[test]
    fn bad_lengths_are_refused() {
        assert!(matches!(Region::anonymous(0), Err(ShmError::BadLength(0))));
        assert!(matches!(
            Region::anonymous(100),
            Err(ShmError::BadLength(100))
        ));
    }
}
