//! Mapped shared memory: the one place (with the Xen ioctl module) where xenring
//! uses `unsafe`.
//!
//! A [`Region`] is a range of virtual memory that this process mapped and that
//! another domain (another process) may read and write at the same time. The
//! rules that make that sound enough for a hostile peer:
//!
//! * No Rust reference (`&[u8]`, `&T`) to shared bytes is ever handed out.
//!   Plain data is moved with [`Region::read`] and [`Region::write`], which copy
//!   between the region and private memory; whatever the peer does meanwhile
//!   can only change the bytes copied, never the copying.
//! * Those copies are volatile, never a plain `memcpy`: a plain copy of
//!   memory the peer writes at the same time lets the compiler read a
//!   shared byte twice (or again after the caller checked it), or merge and
//!   split accesses as it likes. A volatile access happens exactly once, as
//!   written, so what [`Region::read`] returned is what the caller checks
//!   and uses (the single-fetch rule), as with Linux's `READ_ONCE` and
//!   rust-vmm's vm-memory. The copies move aligned 16-byte blocks (x86_64;
//!   64-bit words elsewhere) and single bytes at unaligned edges. Per-word
//!   Relaxed atomic copies were measured too and were clearly slower (P1
//!   stream: 4 to 5 GB/s against 7 to 9 on the same loaded machine):
//!   atomics are never wider than a word and never merged.
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
    /// old and new bytes, which the caller validates (it is private now). Each
    /// shared byte is fetched exactly once (see the module docs).
    ///
    /// # Panics
    /// If the range is outside the region (a bug in xenring, not the peer).
    pub fn read(&self, offset: usize, buf: &mut [u8]) {
        self.check(offset, buf.len(), 1);
        // SAFETY: the source range is inside the mapping (checked) and the
        // destination is a private buffer that cannot overlap a mapping.
        unsafe { copy_from_shared(self.ptr.as_ptr().add(offset), buf) }
    }

    /// Copies `data` into the region at `offset`.
    ///
    /// # Panics
    /// If the range is outside the region or the region is read-only.
    pub fn write(&self, offset: usize, data: &[u8]) {
        self.check(offset, data.len(), 1);
        self.check_writable();
        // SAFETY: the destination range is inside a writable mapping
        // (checked); the source is private memory.
        unsafe { copy_to_shared(data, self.ptr.as_ptr().add(offset)) }
    }

    /// Sets `len` bytes at `offset` to `byte`.
    pub fn fill(&self, offset: usize, len: usize, byte: u8) {
        self.check(offset, len, 1);
        self.check_writable();
        let dst = self.ptr.as_ptr().wrapping_add(offset);
        let (head, words, tail) = split_aligned(dst as usize, len, 8);
        let word = u64::from_ne_bytes([byte; 8]);
        // SAFETY: every address below is inside the writable range checked
        // above; `split_aligned` makes the word addresses 8-byte aligned.
        unsafe {
            for i in (0..head).chain(len - tail..len) {
                dst.add(i).write_volatile(byte);
            }
            for w in 0..words {
                dst.add(head + 8 * w).cast::<u64>().write_volatile(word);
            }
        }
    }

    /// Copies `len` bytes from `src` at `src_off` to `self` at `dst_off`.
    /// The two regions may be the same; overlapping ranges are allowed
    /// (the result is as if the source were copied aside first, unless a
    /// peer writes the source meanwhile).
    pub fn copy_from(&self, dst_off: usize, src: &Region, src_off: usize, len: usize) {
        self.check(dst_off, len, 1);
        src.check(src_off, len, 1);
        self.check_writable();
        let (s, d) = (
            src.ptr.as_ptr().wrapping_add(src_off),
            self.ptr.as_ptr().wrapping_add(dst_off),
        );
        // Through a private bounce buffer, a chunk at a time; from the end
        // when the destination lies above an overlapping source, so that no
        // chunk reads bytes an earlier chunk wrote (memmove's rule).
        const CHUNK: usize = 4096;
        let mut bounce = [0u8; CHUNK];
        let chunks = len.div_ceil(CHUNK);
        let backwards = (d as usize) > (s as usize);
        for k in 0..chunks {
            let k = if backwards { chunks - 1 - k } else { k };
            let at = k * CHUNK;
            let n = (len - at).min(CHUNK);
            // SAFETY: both chunks lie inside ranges checked above (source
            // readable, destination writable); `bounce` is private.
            unsafe {
                copy_from_shared(s.add(at), &mut bounce[..n]);
                copy_to_shared(&bounce[..n], d.add(at));
            }
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

/// The widest access the copies make: a 16-byte vector where the base
/// instruction set has one (x86_64: SSE2), else a 64-bit word. A volatile
/// access of it is one load or store instruction.
#[cfg(target_arch = "x86_64")]
type Block = std::arch::x86_64::__m128i;
#[cfg(not(target_arch = "x86_64"))]
type Block = u64;
const BLOCK: usize = std::mem::size_of::<Block>();

/// Splits `len` bytes at address `addr` into leading bytes up to the first
/// `align`-byte boundary, whole aligned units of `align` bytes, and
/// trailing bytes: `(head, units, tail)` with `head + align * units + tail
/// == len`.
fn split_aligned(addr: usize, len: usize, align: usize) -> (usize, usize, usize) {
    let head = (addr.wrapping_neg() & (align - 1)).min(len);
    let units = (len - head) / align;
    (head, units, len - head - align * units)
}

/// Copies `dst.len()` bytes of shared memory at `src` into `dst`, each
/// shared byte read once by a volatile load (aligned blocks, bytes at the
/// edges).
///
/// # Safety
/// `src..src + dst.len()` must be mapped readable for the whole call and
/// must not overlap `dst`.
unsafe fn copy_from_shared(src: *const u8, dst: &mut [u8]) {
    let len = dst.len();
    let (head, blocks, tail) = split_aligned(src as usize, len, BLOCK);
    let out = dst.as_mut_ptr();
    // SAFETY: every source address is inside the range
    // the caller guarantees mapped, and block addresses are aligned to
    // BLOCK (`split_aligned`), as `read_volatile` requires. The destination
    // is `dst`, written in bounds through its own pointer (unaligned
    // writes: private memory has any alignment).
    unsafe {
        for i in (0..head).chain(len - tail..len) {
            *out.add(i) = src.add(i).read_volatile();
        }
        let block = |at: usize| {
            let v = src.add(at).cast::<Block>().read_volatile();
            out.add(at).cast::<Block>().write_unaligned(v);
        };
        // Four blocks a step: volatile accesses are never merged, so the
        // loop's own overhead is worth cutting.
        let end = head + BLOCK * blocks;
        let mut at = head;
        while at + 4 * BLOCK <= end {
            block(at);
            block(at + BLOCK);
            block(at + 2 * BLOCK);
            block(at + 3 * BLOCK);
            at += 4 * BLOCK;
        }
        while at < end {
            block(at);
            at += BLOCK;
        }
    }
}

/// Copies `src` into shared memory at `dst`, each shared byte written once
/// by a volatile store (aligned blocks, bytes at the edges).
///
/// # Safety
/// `dst..dst + src.len()` must be mapped writable for the whole call and
/// must not overlap `src`.
unsafe fn copy_to_shared(src: &[u8], dst: *mut u8) {
    let len = src.len();
    let (head, blocks, tail) = split_aligned(dst as usize, len, BLOCK);
    let inp = src.as_ptr();
    // SAFETY: as in `copy_from_shared`, the other way round: destination
    // addresses are inside the range the caller guarantees mapped writable,
    // block addresses are aligned, and the private source is read in
    // bounds (unaligned reads).
    unsafe {
        for i in (0..head).chain(len - tail..len) {
            dst.add(i).write_volatile(*inp.add(i));
        }
        let block = |at: usize| {
            let v = inp.add(at).cast::<Block>().read_unaligned();
            dst.add(at).cast::<Block>().write_volatile(v);
        };
        let end = head + BLOCK * blocks;
        let mut at = head;
        while at + 4 * BLOCK <= end {
            block(at);
            block(at + BLOCK);
            block(at + 2 * BLOCK);
            block(at + 3 * BLOCK);
            at += 4 * BLOCK;
        }
        while at < end {
            block(at);
            at += BLOCK;
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

    /// Every offset and length around the 8-byte word edges, through
    /// read, write, fill and copy_from (both overlap directions), against
    /// a private model of the region.
    #[test]
    fn copies_at_unaligned_edges_and_lengths() {
        let r = Region::anonymous(2 * PAGE_SIZE).unwrap();
        let mut model = vec![0u8; 2 * PAGE_SIZE];
        let byte = |i: usize| (i.wrapping_mul(31) ^ (i >> 8)) as u8;
        let init: Vec<u8> = (0..2 * PAGE_SIZE).map(byte).collect();
        r.write(0, &init);
        model.copy_from_slice(&init);
        let lens = (0..=40).chain([63, 64, 65, 4095, 4096, 4097, 5000]);
        for len in lens {
            for off in 0..17 {
                // read
                let mut got = vec![0xeeu8; len];
                r.read(off, &mut got);
                assert_eq!(got, model[off..off + len], "read {off}+{len}");
                // write
                let data: Vec<u8> = (0..len).map(|i| byte(i + len + off) ^ 0x5a).collect();
                r.write(off + 3, &data);
                model[off + 3..off + 3 + len].copy_from_slice(&data);
                // fill
                r.fill(off + 7, len / 2, len as u8);
                model[off + 7..off + 7 + len / 2].fill(len as u8);
                // copy_from, forwards and backwards over an overlap
                for (d, s) in [(off + 1, off + 11), (off + 11, off + 1)] {
                    r.copy_from(d, &r, s, len);
                    model.copy_within(s..s + len, d);
                }
                let mut all = vec![0u8; 2 * PAGE_SIZE];
                r.read(0, &mut all);
                assert!(all == model, "after {off}+{len}");
            }
        }
        // Between two regions, across the page boundary.
        let other = Region::anonymous(2 * PAGE_SIZE).unwrap();
        other.copy_from(5, &r, PAGE_SIZE - 9, 20);
        let mut got = [0u8; 20];
        other.read(5, &mut got);
        assert_eq!(got, model[PAGE_SIZE - 9..PAGE_SIZE + 11]);
    }
}
