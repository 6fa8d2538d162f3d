//! A guest's grant table: a shared region of `grant_entry_v1` that the guest
//! writes by the seed's rules and the hypervisor reads and updates, plus the
//! allocator of references.
//!
//! Invariants:
//! * references 0..[`GNTTAB_NR_RESERVED_ENTRIES`] are never handed out;
//! * a table made with [`GrantTable::with_ranges`] hands out only references
//!   of the ranges given to it with [`GrantTable::add_range`] (several users
//!   of one grant table, such as the processes of one domain, each own
//!   disjoint ranges);
//! * a reference is allocated to one user at a time, and is only returned to
//!   the free list once its entry is invalid (type `GTF_invalid`);
//! * every access to an entry's words is atomic (see [`super::entry`]).

use std::sync::atomic::AtomicU32;
use std::sync::Mutex;

use super::entry::{self, EntryError, Reclaim};
use crate::abi::grant::{
    DomId, GrantEntry, GrantRef, ENTRY_FLAGS_OFFSET, ENTRY_FRAME_OFFSET,
    GNTTAB_NR_RESERVED_ENTRIES, GTF_ACCEPT_TRANSFER, GTF_PERMIT_ACCESS, GTF_READONLY,
    GTF_TYPE_MASK,
};
use crate::shm::Region;

/// Size of one `grant_entry_v1`.
pub const ENTRY_SIZE: usize = 8;

/// Errors of grant-table operations; each names the reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    /// No free reference is left (in this table's ranges, for a table made
    /// with [`GrantTable::with_ranges`]).
    #[error("grant table full: all {capacity} references are in use")]
    Full {
        /// Number of entries in the table.
        capacity: u32,
    },
    /// A range given to [`GrantTable::add_range`] is empty, beyond the
    /// table, or overlaps one it has already.
    #[error("grant reference range {lo}..{hi} is empty, outside the table or already added")]
    BadRange {
        /// First reference of the range.
        lo: GrantRef,
        /// One past the last.
        hi: GrantRef,
    },
    /// The reference is reserved or beyond the table.
    #[error("grant reference {0} is reserved or outside the table")]
    BadRef(GrantRef),
    /// The reference is not allocated (double free, or never allocated).
    #[error("grant reference {0} is not allocated")]
    NotAllocated(GrantRef),
    /// The entry is still valid, so the reference cannot be freed.
    #[error("grant reference {0} is still in use (entry not invalid)")]
    InUse(GrantRef),
    /// An entry rule refused the operation.
    #[error("grant reference {gref}: {source}")]
    Entry {
        /// The reference.
        gref: GrantRef,
        /// What the rule found.
        #[source]
        source: EntryError,
    },
}

/// The two atomic words of entry `gref` in a table region: `flags|domid<<16`
/// and `frame`. `None` if the entry is outside the region.
pub fn entry_cells(region: &Region, gref: GrantRef) -> Option<(&AtomicU32, &AtomicU32)> {
    let off = (gref as usize).checked_mul(ENTRY_SIZE)?;
    if off.checked_add(ENTRY_SIZE)? > region.len() {
        return None;
    }
    Some((
        region.atomic_u32(off + ENTRY_FLAGS_OFFSET),
        region.atomic_u32(off + ENTRY_FRAME_OFFSET),
    ))
}

#[derive(Debug)]
struct Refs {
    free: Vec<GrantRef>,
    allocated: Vec<bool>,
    /// The ranges handed out from, `lo..hi`.
    ranges: Vec<(GrantRef, GrantRef)>,
}

/// The guest side of a grant table over a shared region.
#[derive(Debug)]
pub struct GrantTable {
    region: Region,
    capacity: u32,
    refs: Mutex<Refs>,
}

impl GrantTable {
    /// A table over `region` (its length / 8 entries). The region's entries
    /// must all be invalid (a new table is zeroed).
    pub fn new(region: Region) -> GrantTable {
        let t = GrantTable::with_ranges(region);
        let capacity = t.capacity;
        if capacity > GNTTAB_NR_RESERVED_ENTRIES {
            t.add_range(GNTTAB_NR_RESERVED_ENTRIES, capacity)
                .expect("the whole table is one valid range");
        }
        t
    }

    /// A table over `region` that hands out no reference until ranges are
    /// added with [`GrantTable::add_range`] (a process that shares its
    /// domain's grant table with other processes owns only some ranges).
    pub fn with_ranges(region: Region) -> GrantTable {
        let capacity = (region.len() / ENTRY_SIZE) as u32;
        GrantTable {
            region,
            capacity,
            refs: Mutex::new(Refs {
                free: Vec::new(),
                allocated: vec![false; capacity as usize],
                ranges: Vec::new(),
            }),
        }
    }

    /// Adds references `lo..hi` (reserved ones left out) to those this
    /// table hands out. Their entries must be invalid. Refused if the range
    /// is empty, goes beyond the table or overlaps one added before.
    pub fn add_range(&self, lo: GrantRef, hi: GrantRef) -> Result<(), GrantError> {
        let lo = lo.max(GNTTAB_NR_RESERVED_ENTRIES);
        let mut refs = self.refs.lock().expect("grant refs lock");
        if lo >= hi || hi > self.capacity || refs.ranges.iter().any(|&(l, h)| lo < h && l < hi) {
            return Err(GrantError::BadRange { lo, hi });
        }
        refs.ranges.push((lo, hi));
        // Newer ranges go under the older free refs; each range is handed
        // out lowest first.
        let old = std::mem::take(&mut refs.free);
        refs.free = (lo..hi).rev().chain(old).collect();
        Ok(())
    }

    /// The ranges this table hands out references from, in the order they
    /// were added.
    pub fn ranges(&self) -> Vec<(GrantRef, GrantRef)> {
        self.refs.lock().expect("grant refs lock").ranges.clone()
    }

    /// Number of entries, reserved ones included.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// The shared region holding the entries.
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// Number of references currently allocated.
    pub fn allocated(&self) -> usize {
        let refs = self.refs.lock().expect("grant refs lock");
        refs.allocated.iter().filter(|a| **a).count()
    }

    /// Takes a free reference (its entry is invalid).
    pub fn allocate(&self) -> Result<GrantRef, GrantError> {
        let mut refs = self.refs.lock().expect("grant refs lock");
        let gref = refs.free.pop().ok_or(GrantError::Full {
            capacity: self.capacity,
        })?;
        refs.allocated[gref as usize] = true;
        Ok(gref)
    }

    /// Returns a reference whose entry is invalid to the free list.
    pub fn release(&self, gref: GrantRef) -> Result<(), GrantError> {
        let (hdr, _) = self.cells(gref)?;
        let mut refs = self.refs.lock().expect("grant refs lock");
        if !refs.allocated[gref as usize] {
            return Err(GrantError::NotAllocated(gref));
        }
        let flags = entry::flags_of(hdr.load(std::sync::atomic::Ordering::Acquire));
        if flags & GTF_TYPE_MASK != 0 {
            return Err(GrantError::InUse(gref));
        }
        refs.allocated[gref as usize] = false;
        refs.free.push(gref);
        Ok(())
    }

    fn cells(&self, gref: GrantRef) -> Result<(&AtomicU32, &AtomicU32), GrantError> {
        if gref < GNTTAB_NR_RESERVED_ENTRIES {
            return Err(GrantError::BadRef(gref));
        }
        entry_cells(&self.region, gref).ok_or(GrantError::BadRef(gref))
    }

    fn owned_cells(&self, gref: GrantRef) -> Result<(&AtomicU32, &AtomicU32), GrantError> {
        let cells = self.cells(gref)?;
        if !self.refs.lock().expect("grant refs lock").allocated[gref as usize] {
            return Err(GrantError::NotAllocated(gref));
        }
        Ok(cells)
    }

    fn rule<T>(gref: GrantRef, r: Result<T, EntryError>) -> Result<T, GrantError> {
        r.map_err(|source| GrantError::Entry { gref, source })
    }

    /// Grants `domid` access to `frame` (read-only or writable) through the
    /// allocated reference `gref`.
    pub fn grant_access(
        &self,
        gref: GrantRef,
        domid: DomId,
        frame: u32,
        readonly: bool,
    ) -> Result<(), GrantError> {
        let (hdr, fr) = self.owned_cells(gref)?;
        let flags = GTF_PERMIT_ACCESS | if readonly { GTF_READONLY } else { 0 };
        entry::install(hdr, fr, domid, frame, flags);
        Ok(())
    }

    /// Ends access through `gref` if the peer has no mapping of it; on
    /// [`EntryError::StillMapped`] the entry is left intact and may be ended
    /// later.
    pub fn end_access(&self, gref: GrantRef) -> Result<(), GrantError> {
        let (hdr, _) = self.owned_cells(gref)?;
        Self::rule(gref, entry::end_access(hdr))
    }

    /// Offers `gref` to `domid` as a slot to transfer a page into.
    pub fn offer_transfer(&self, gref: GrantRef, domid: DomId) -> Result<(), GrantError> {
        let (hdr, fr) = self.owned_cells(gref)?;
        entry::install(hdr, fr, domid, 0, GTF_ACCEPT_TRANSFER);
        Ok(())
    }

    /// Removes an accept_transfer entry unconditionally (the seed's rule;
    /// only when no transfer can be under way).
    pub fn remove_transfer(&self, gref: GrantRef) -> Result<(), GrantError> {
        let (hdr, _) = self.owned_cells(gref)?;
        entry::remove_accept_transfer(hdr);
        Ok(())
    }

    /// The reclaim rule: takes an accept_transfer entry back, with the frame
    /// if a page was transferred in.
    pub fn reclaim_transfer(&self, gref: GrantRef) -> Result<Reclaim, GrantError> {
        let (hdr, fr) = self.owned_cells(gref)?;
        Self::rule(gref, entry::reclaim_transfer(hdr, fr))
    }

    /// The frame transferred into `gref`, if a transfer has completed (the
    /// entry is then invalid); `None` leaves the entry as it was.
    pub fn take_completed(&self, gref: GrantRef) -> Result<Option<u32>, GrantError> {
        let (hdr, fr) = self.owned_cells(gref)?;
        Ok(entry::take_completed(hdr, fr))
    }

    /// Makes a writable grant read-only, unless it is mapped writable.
    pub fn make_readonly(&self, gref: GrantRef) -> Result<(), GrantError> {
        let (hdr, _) = self.owned_cells(gref)?;
        Self::rule(gref, entry::make_readonly(hdr))
    }

    /// Makes a read-only grant writable.
    pub fn make_writable(&self, gref: GrantRef) -> Result<(), GrantError> {
        let (hdr, _) = self.owned_cells(gref)?;
        entry::make_writable(hdr);
        Ok(())
    }

    /// A private copy of entry `gref` (for reports and tests).
    pub fn snapshot(&self, gref: GrantRef) -> Result<GrantEntry<[u8; 8]>, GrantError> {
        let (hdr, fr) = entry_cells(&self.region, gref).ok_or(GrantError::BadRef(gref))?;
        Ok(snapshot_of(hdr, fr))
    }
}

/// A private copy of one entry from its two words.
pub fn snapshot_of(hdr: &AtomicU32, frame: &AtomicU32) -> GrantEntry<[u8; 8]> {
    use std::sync::atomic::Ordering;
    let w = hdr.load(Ordering::Acquire);
    let mut e = GrantEntry::new_unchecked([0u8; 8]);
    e.set_flags(entry::flags_of(w));
    e.set_domid(entry::domid_of(w));
    e.set_frame(frame.load(Ordering::Relaxed));
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::grant::{GTF_READING, GTF_READONLY};
    use crate::shm::PAGE_SIZE;

    fn table() -> GrantTable {
        GrantTable::new(Region::anonymous(PAGE_SIZE).unwrap())
    }

    #[test]
    fn allocator_skips_reserved_entries_and_fills_up() {
        let t = table();
        assert_eq!(t.capacity(), 512);
        let mut got = Vec::new();
        while let Ok(r) = t.allocate() {
            got.push(r);
        }
        assert_eq!(got.len(), 512 - 8);
        assert_eq!(got[0], 8);
        assert!(got.iter().all(|r| *r >= 8 && *r < 512));
        assert_eq!(t.allocate(), Err(GrantError::Full { capacity: 512 }));
        t.release(got[3]).unwrap();
        assert_eq!(t.allocate(), Ok(got[3]));
    }

    #[test]
    fn a_table_with_ranges_hands_out_only_its_ranges() {
        let t = GrantTable::with_ranges(Region::anonymous(2 * PAGE_SIZE).unwrap());
        assert_eq!(t.capacity(), 1024);
        assert_eq!(t.allocate(), Err(GrantError::Full { capacity: 1024 }));
        t.add_range(512, 1024).unwrap();
        assert_eq!(t.allocate(), Ok(512));
        // Reserved refs are left out of the first range.
        t.add_range(0, 512).unwrap();
        assert_eq!(t.ranges(), vec![(512, 1024), (8, 512)]);
        let mut got = vec![512];
        while let Ok(r) = t.allocate() {
            got.push(r);
        }
        assert_eq!(got.len(), 1024 - 8);
        assert_eq!(&got[..3], &[512, 513, 514], "the older range first");
        assert_eq!(got[512], 8);
        assert!(got.iter().all(|r| *r >= 8));
        for (lo, hi) in [(600, 700), (0, 8), (8, 8), (1000, 1025), (2000, 3000)] {
            assert!(
                matches!(t.add_range(lo, hi), Err(GrantError::BadRange { .. })),
                "{lo}..{hi}"
            );
        }
        // A ref outside the ranges cannot be used through this table.
        let t2 = GrantTable::with_ranges(Region::anonymous(2 * PAGE_SIZE).unwrap());
        t2.add_range(512, 1024).unwrap();
        assert_eq!(
            t2.grant_access(9, 1, 1, false),
            Err(GrantError::NotAllocated(9))
        );
    }

    #[test]
    fn release_refuses_double_free_valid_entries_and_reserved_refs() {
        let t = table();
        let r = t.allocate().unwrap();
        t.grant_access(r, 1, 42, false).unwrap();
        assert_eq!(t.release(r), Err(GrantError::InUse(r)));
        t.end_access(r).unwrap();
        t.release(r).unwrap();
        assert_eq!(t.release(r), Err(GrantError::NotAllocated(r)));
        assert_eq!(t.release(1), Err(GrantError::BadRef(1)));
        assert_eq!(t.release(512), Err(GrantError::BadRef(512)));
        assert_eq!(
            t.grant_access(r, 1, 1, false),
            Err(GrantError::NotAllocated(r))
        );
    }

    #[test]
    fn grant_writes_entry_bytes_in_the_shared_region() {
        let t = table();
        let r = t.allocate().unwrap();
        t.grant_access(r, 0x0102, 0x0a0b_0c0d, true).unwrap();
        let mut raw = [0u8; 8];
        t.region().read(r as usize * 8, &mut raw);
        assert_eq!(raw, [0x05, 0x00, 0x02, 0x01, 0x0d, 0x0c, 0x0b, 0x0a]);
        let s = t.snapshot(r).unwrap();
        assert_eq!(
            (s.flags(), s.domid(), s.frame()),
            (GTF_PERMIT_ACCESS | GTF_READONLY, 0x102, 0x0a0b_0c0d)
        );
    }

    #[test]
    fn end_access_while_mapped_names_the_reference() {
        let t = table();
        let r = t.allocate().unwrap();
        t.grant_access(r, 1, 42, false).unwrap();
        let (hdr, fr) = entry_cells(t.region(), r).unwrap();
        entry::hv_pin(hdr, fr, 1, false).unwrap();
        let err = t.end_access(r).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "grant reference {r}: grant still mapped by the peer (flags {:#06x})",
                GTF_PERMIT_ACCESS | GTF_READING
            )
        );
        entry::hv_unpin(hdr, true, false);
        t.end_access(r).unwrap();
    }
}
