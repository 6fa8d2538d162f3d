//! The rules for one grant entry, both halves: what the granting guest does
//! (the seed's header comment, implemented exactly as written) and what the
//! hypervisor does (map, unmap, transfer), so that the races between them can
//! be model-checked together.
//!
//! # One 32-bit word for flags and domid
//!
//! An entry starts with `u16 flags` and `u16 domid`. The hypervisor updates
//! them together, with a compare-and-swap over the 32-bit word
//! `flags | domid << 16`, so that a guest re-granting the entry to another
//! domain between the hypervisor's check and its update is caught. Here the
//! guest uses the same 32-bit word: a compare-and-swap that changes only the
//! low half is the seed's 16-bit compare-and-swap on `flags` (the guest only
//! changes `domid` while the entry is invalid, so keeping it unchanged is
//! exactly what the 16-bit operation does). Using one access size for the
//! word keeps every access well defined for Rust's memory model and for
//! loom, which do not define mixed-size atomics. On real Xen the guest side of
//! the table is the kernel's (gntalloc), so nothing of ours ever meets a
//! 16-bit access to the same word.
//!
//! # Orderings
//!
//! * install: `domid`, `frame` (relaxed), **release fence**, `flags`
//!   (relaxed). The fence is the seed's write barrier: a hypervisor that sees
//!   the new flags (acquire) must also see the domid and frame they cover.
//! * hypervisor map: compare-and-swap with **acquire** on success, so the
//!   frame read after it is the one the guest installed.
//! * hypervisor unpin (last unmap): clear `GTF_reading`/`GTF_writing` with
//!   **release**, so that everything the mapper wrote to the page happens
//!   before the guest's successful removal (whose compare-and-swap is
//!   **acquire**) and the guest's reuse of the page.
//! * transfer: the hypervisor writes `frame`, **release fence**, then sets
//!   `GTF_transfer_completed`; the guest waits for completed, **acquire
//!   fence**, then reads `frame` (the seed's read barrier).

use std::sync::atomic::Ordering;

use crate::abi::grant::{
    DomId, GnttabStatus, GTF_ACCEPT_TRANSFER, GTF_PERMIT_ACCESS, GTF_READING, GTF_READONLY,
    GTF_TRANSFER_COMMITTED, GTF_TRANSFER_COMPLETED, GTF_TYPE_MASK, GTF_WRITING,
};

/// The atomic operations the rules need, implemented for the standard
/// `AtomicU32` (shared memory) and, in tests, for loom's model of it.
pub trait AtomicWord {
    /// Atomic load.
    fn load(&self, order: Ordering) -> u32;
    /// Atomic store.
    fn store(&self, v: u32, order: Ordering);
    /// Strong compare-and-swap.
    fn compare_exchange(
        &self,
        current: u32,
        new: u32,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u32, u32>;
    /// Atomic or; returns the old value.
    fn fetch_or(&self, v: u32, order: Ordering) -> u32;
    /// Atomic and; returns the old value.
    fn fetch_and(&self, v: u32, order: Ordering) -> u32;
    /// A memory fence of the same memory model as the word.
    fn fence(order: Ordering);
    /// Called in every wait loop (a spin hint; a yield point under loom).
    fn spin();
}

/// Implements [`AtomicWord`] for an `AtomicU32`-like type whose methods
/// have the standard signatures, given its fence and spin functions.
macro_rules! impl_atomic_word {
    ($ty:ty, $fence:path, $spin:path) => {
        impl $crate::grant::entry::AtomicWord for $ty {
            fn load(&self, order: Ordering) -> u32 {
                <$ty>::load(self, order)
            }
            fn store(&self, v: u32, order: Ordering) {
                <$ty>::store(self, v, order)
            }
            fn compare_exchange(
                &self,
                c: u32,
                n: u32,
                s: Ordering,
                f: Ordering,
            ) -> Result<u32, u32> {
                <$ty>::compare_exchange(self, c, n, s, f)
            }
            fn fetch_or(&self, v: u32, order: Ordering) -> u32 {
                <$ty>::fetch_or(self, v, order)
            }
            fn fetch_and(&self, v: u32, order: Ordering) -> u32 {
                <$ty>::fetch_and(self, v, order)
            }
            fn fence(order: Ordering) {
                $fence(order)
            }
            fn spin() {
                $spin()
            }
        }
    };
}
#[cfg(test)]
pub(crate) use impl_atomic_word;

impl_atomic_word!(
    std::sync::atomic::AtomicU32,
    std::sync::atomic::fence,
    std::hint::spin_loop
);

/// The `flags` half of the word.
pub fn flags_of(word: u32) -> u16 {
    word as u16
}

/// The `domid` half of the word.
pub fn domid_of(word: u32) -> DomId {
    (word >> 16) as u16
}

fn word(flags: u16, domid: DomId) -> u32 {
    u32::from(flags) | u32::from(domid) << 16
}

/// Why the guest could not remove or change an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// `GTF_reading` or `GTF_writing` is set: the grantee still has the page
    /// mapped. The entry was left as it was.
    #[error("grant still mapped by the peer (flags {flags:#06x})")]
    StillMapped {
        /// The flags seen.
        flags: u16,
    },
    /// The entry is mapped writable, so it cannot be made read-only.
    #[error("grant is mapped writable (flags {flags:#06x})")]
    Writing {
        /// The flags seen.
        flags: u16,
    },
    /// The entry is not of the type the operation needs.
    #[error("grant entry has type {found}, expected {expected}")]
    WrongType {
        /// Type found.
        found: u16,
        /// Type expected.
        expected: u16,
    },
}

/// What reclaiming an accept_transfer entry found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reclaim {
    /// No transfer was committed; the entry is now invalid.
    NotFilled,
    /// A page was transferred in: its frame number. The entry's flags are
    /// now 0 (invalid).
    Filled(u32),
}

// ---------------------------------------------------------------- guest side

/// Installs a valid entry: write `domid`, write `frame`, write barrier, write
/// `flags` (which include the type). The entry must be invalid beforehand
/// (the reference allocator guarantees it).
pub fn install<W: AtomicWord>(hdr: &W, frame_cell: &W, domid: DomId, frame: u32, flags: u16) {
    // flags stay 0 (invalid) while domid changes: the hypervisor ignores an
    // invalid entry whatever its domid.
    hdr.store(word(0, domid), Ordering::Relaxed);
    frame_cell.store(frame, Ordering::Relaxed);
    // Write barrier: a hypervisor that observes the flags written below must
    // also observe domid and frame, or it could map a stale frame.
    W::fence(Ordering::Release);
    hdr.store(word(flags, domid), Ordering::Relaxed);
}

/// Removes an unused permit_access entry: read flags; they must have neither
/// `GTF_reading` nor `GTF_writing`; compare-and-swap flags from that value to
/// 0; write barrier. A failed compare-and-swap means the peer mapped it
/// meanwhile: [`EntryError::StillMapped`], entry left intact.
pub fn end_access<W: AtomicWord>(hdr: &W) -> Result<(), EntryError> {
    let seen = hdr.load(Ordering::Relaxed);
    let flags = flags_of(seen);
    if flags & GTF_TYPE_MASK != GTF_PERMIT_ACCESS {
        return Err(EntryError::WrongType {
            found: flags & GTF_TYPE_MASK,
            expected: GTF_PERMIT_ACCESS,
        });
    }
    if flags & (GTF_READING | GTF_WRITING) != 0 {
        return Err(EntryError::StillMapped { flags });
    }
    // Acquire on success pairs with the hypervisor's release when it cleared
    // the mapped bits: the mapper's writes to the page happen before ours.
    match hdr.compare_exchange(
        seen,
        word(0, domid_of(seen)),
        Ordering::AcqRel,
        Ordering::Relaxed,
    ) {
        Ok(_) => {
            // Write barrier: later stores to the page (its reuse) are ordered
            // after the entry became invalid.
            W::fence(Ordering::Release);
            Ok(())
        }
        Err(now) => Err(EntryError::StillMapped {
            flags: flags_of(now),
        }),
    }
}

/// Removes an accept_transfer entry unconditionally: clear flags; write
/// barrier. Only sound when no transfer can be under way; otherwise use
/// [`reclaim_transfer`].
pub fn remove_accept_transfer<W: AtomicWord>(hdr: &W) {
    let seen = hdr.load(Ordering::Relaxed);
    hdr.store(word(0, domid_of(seen)), Ordering::Relaxed);
    // Write barrier: the entry is invalid before anything that follows.
    W::fence(Ordering::Release);
}

/// The accept-transfer reclaim rule: while no transfer is committed,
/// compare-and-swap the flags to 0 and report [`Reclaim::NotFilled`]; once
/// committed, wait for `GTF_transfer_completed`, read barrier, read `frame`.
///
/// The wait is bounded only by the hypervisor finishing the transfer it
/// committed to, which it does without waiting on anyone.
pub fn reclaim_transfer<W: AtomicWord>(hdr: &W, frame_cell: &W) -> Result<Reclaim, EntryError> {
    loop {
        let seen = hdr.load(Ordering::Relaxed);
        let flags = flags_of(seen);
        if flags & GTF_TYPE_MASK != GTF_ACCEPT_TRANSFER {
            return Err(EntryError::WrongType {
                found: flags & GTF_TYPE_MASK,
                expected: GTF_ACCEPT_TRANSFER,
            });
        }
        if flags & GTF_TRANSFER_COMMITTED == 0 {
            if hdr
                .compare_exchange(
                    seen,
                    word(0, domid_of(seen)),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
            {
                return Ok(Reclaim::NotFilled);
            }
            // The hypervisor committed in between: look again.
            continue;
        }
        let mut now = seen;
        while flags_of(now) & GTF_TRANSFER_COMPLETED == 0 {
            W::spin();
            now = hdr.load(Ordering::Relaxed);
        }
        // Read barrier: pairs with the hypervisor's release fence between
        // writing frame and setting completed.
        W::fence(Ordering::Acquire);
        let frame = frame_cell.load(Ordering::Relaxed);
        hdr.store(word(0, domid_of(now)), Ordering::Relaxed);
        return Ok(Reclaim::Filled(frame));
    }
}

/// If the entry is accept_transfer and the transfer has completed, reads the
/// frame (read barrier first) and leaves the entry invalid. Returns `None`
/// when nothing has completed yet (the entry is then untouched).
pub fn take_completed<W: AtomicWord>(hdr: &W, frame_cell: &W) -> Option<u32> {
    let seen = hdr.load(Ordering::Relaxed);
    let flags = flags_of(seen);
    if flags & GTF_TYPE_MASK != GTF_ACCEPT_TRANSFER || flags & GTF_TRANSFER_COMPLETED == 0 {
        return None;
    }
    // Read barrier: see reclaim_transfer.
    W::fence(Ordering::Acquire);
    let frame = frame_cell.load(Ordering::Relaxed);
    hdr.store(word(0, domid_of(seen)), Ordering::Relaxed);
    Some(frame)
}

/// Writable -> read-only: compare-and-swap to set `GTF_readonly` while
/// `GTF_writing` is clear (retrying if only other bits changed).
pub fn make_readonly<W: AtomicWord>(hdr: &W) -> Result<(), EntryError> {
    let mut seen = hdr.load(Ordering::Relaxed);
    loop {
        let flags = flags_of(seen);
        if flags & GTF_TYPE_MASK != GTF_PERMIT_ACCESS {
            return Err(EntryError::WrongType {
                found: flags & GTF_TYPE_MASK,
                expected: GTF_PERMIT_ACCESS,
            });
        }
        if flags & GTF_WRITING != 0 {
            return Err(EntryError::Writing { flags });
        }
        match hdr.compare_exchange(
            seen,
            seen | u32::from(GTF_READONLY),
            Ordering::AcqRel,
            Ordering::Relaxed,
        ) {
            Ok(_) => return Ok(()),
            Err(now) => seen = now,
        }
    }
}

/// Read-only -> writable: one atomic bit operation. (The seed calls for "a
/// bit-setting instruction"; what it must do is clear `GTF_readonly`, which is
/// what Linux does with an atomic bit clear.)
pub fn make_writable<W: AtomicWord>(hdr: &W) {
    hdr.fetch_and(!u32::from(GTF_READONLY), Ordering::Release);
}

// ----------------------------------------------------------- hypervisor side

/// Hypervisor: pin an entry for a mapping by `mapper` (read-only or
/// writable). Checks, in one compare-and-swap over flags|domid, that the type
/// is permit_access, the domid is the mapper's, and a writable map is not of
/// a read-only entry; sets `GTF_reading` (and `GTF_writing`). Returns the
/// granted frame.
///
/// Status codes: wrong type -> `GeneralError` (as Xen); wrong domid ->
/// `PermissionDenied` (Xen answers `GeneralError` for both; a distinct code
/// names the mistake); write map of a read-only entry -> `GeneralError` (as
/// Xen); an entry that keeps changing under us (5 tries, as Xen) ->
/// `GeneralError`.
pub fn hv_pin<W: AtomicWord>(
    hdr: &W,
    frame_cell: &W,
    mapper: DomId,
    writable: bool,
) -> Result<u32, GnttabStatus> {
    let mut seen = hdr.load(Ordering::Relaxed);
    for _ in 0..5 {
        let flags = flags_of(seen);
        if flags & GTF_TYPE_MASK != GTF_PERMIT_ACCESS {
            return Err(GnttabStatus::GeneralError);
        }
        if domid_of(seen) != mapper {
            return Err(GnttabStatus::PermissionDenied);
        }
        let mut new = flags | GTF_READING;
        if writable {
            if flags & GTF_READONLY != 0 {
                return Err(GnttabStatus::GeneralError);
            }
            new |= GTF_WRITING;
        }
        // Acquire pairs with the guest's release fence in install(): the
        // frame read below is the one installed with these flags.
        match hdr.compare_exchange(
            seen,
            word(new, domid_of(seen)),
            Ordering::Acquire,
            Ordering::Relaxed,
        ) {
            Ok(_) => return Ok(frame_cell.load(Ordering::Relaxed)),
            Err(now) => seen = now,
        }
    }
    Err(GnttabStatus::GeneralError)
}

/// Hypervisor: the last read-only mapping (`clear_reading`) and/or the last
/// writable mapping (`clear_writing`) went away: clear those bits with
/// release, so the mapper's accesses happen before the guest's removal.
pub fn hv_unpin<W: AtomicWord>(hdr: &W, clear_reading: bool, clear_writing: bool) {
    let mut mask = 0u16;
    if clear_reading {
        mask |= GTF_READING;
    }
    if clear_writing {
        mask |= GTF_WRITING;
    }
    if mask != 0 {
        hdr.fetch_and(!u32::from(mask), Ordering::Release);
    }
}

/// Hypervisor, first half of a transfer: the entry's flags must be exactly
/// `GTF_accept_transfer` and its domid the sender; compare-and-swap in
/// `GTF_transfer_committed`. Refused with `BadGntref` otherwise.
pub fn hv_transfer_commit<W: AtomicWord>(hdr: &W, sender: DomId) -> Result<(), GnttabStatus> {
    let seen = hdr.load(Ordering::Relaxed);
    if flags_of(seen) != GTF_ACCEPT_TRANSFER || domid_of(seen) != sender {
        return Err(GnttabStatus::BadGntref);
    }
    hdr.compare_exchange(
        seen,
        seen | u32::from(GTF_TRANSFER_COMMITTED),
        Ordering::Relaxed,
        Ordering::Relaxed,
    )
    .map(|_| ())
    .map_err(|_| GnttabStatus::BadGntref)
}

/// Hypervisor, second half of a transfer (after the page changed owner):
/// write the frame, write barrier, set `GTF_transfer_completed`.
pub fn hv_transfer_complete<W: AtomicWord>(hdr: &W, frame_cell: &W, frame: u32) {
    frame_cell.store(frame, Ordering::Relaxed);
    // Write barrier: a guest that sees completed sees the frame.
    W::fence(Ordering::Release);
    hdr.fetch_or(u32::from(GTF_TRANSFER_COMPLETED), Ordering::Relaxed);
}

#[cfg(test)]
#[path = "entry_tests.rs"]
mod tests;
