//! The shared part of a ring: geometry, the four atomic index fields of the
//! header, and one-copy access to slots.
//!
//! Everything here touches shared memory only through [`Region`]: the index
//! fields through [`Region::atomic_u32`], slots through [`Region::read`] and
//! [`Region::write`]. Offsets are computed from masked indexes and the
//! geometry fixed at construction, never from a value the peer wrote, so
//! every access lies inside the ring.

use std::borrow::Borrow;
use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};

use super::entry::{slot_size, RingEntry};
use super::RingError;
use crate::abi::ring::{
    ring_entries, REQ_EVENT_OFFSET, REQ_PROD_OFFSET, RSP_EVENT_OFFSET, RSP_PROD_OFFSET,
    SRING_HEADER_SIZE,
};
use crate::shm::{Protection, Region, PAGE_SIZE};

/// The largest ring, in pages (`ring-page-order` 4, Linux's cap).
pub const MAX_RING_PAGES: usize = 16;

/// A ring's shared memory and geometry.
pub(super) struct Shared<M> {
    mem: M,
    /// Number of slots, a power of two.
    size: u32,
    /// Bytes per slot.
    slot: usize,
}

impl<M: Borrow<Region>> fmt::Debug for Shared<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("region", self.region())
            .field("size", &self.size)
            .field("slot", &self.slot)
            .finish()
    }
}

impl<M: Borrow<Region>> Shared<M> {
    /// Checks the region (1, 2, 4, 8 or 16 pages, writable) and computes the
    /// number of slots for entries `Req` and `Rsp`.
    pub(super) fn new<Req: RingEntry, Rsp: RingEntry>(mem: M) -> Result<Self, RingError> {
        let region = mem.borrow();
        let len = region.len();
        let pages = len / PAGE_SIZE;
        if len % PAGE_SIZE != 0 || !pages.is_power_of_two() || pages > MAX_RING_PAGES {
            return Err(RingError::RegionSize { len });
        }
        if region.protection() != Protection::ReadWrite {
            return Err(RingError::ReadOnly);
        }
        let slot = slot_size::<Req, Rsp>();
        let size = ring_entries(len, slot);
        if size == 0 {
            return Err(RingError::EntrySize { slot, len });
        }
        let size = u32::try_from(size).expect("16 pages hold fewer than 2^32 slots");
        Ok(Shared { mem, size, slot })
    }

    pub(super) fn region(&self) -> &Region {
        self.mem.borrow()
    }

    pub(super) fn into_inner(self) -> M {
        self.mem
    }

    /// Number of slots.
    pub(super) fn size(&self) -> u32 {
        self.size
    }

    /// Bytes per slot.
    pub(super) fn slot(&self) -> usize {
        self.slot
    }

    pub(super) fn req_prod(&self) -> &AtomicU32 {
        self.region().atomic_u32(REQ_PROD_OFFSET)
    }

    pub(super) fn req_event(&self) -> &AtomicU32 {
        self.region().atomic_u32(REQ_EVENT_OFFSET)
    }

    pub(super) fn rsp_prod(&self) -> &AtomicU32 {
        self.region().atomic_u32(RSP_PROD_OFFSET)
    }

    pub(super) fn rsp_event(&self) -> &AtomicU32 {
        self.region().atomic_u32(RSP_EVENT_OFFSET)
    }

    /// Puts the header in the state of a ring that has carried `start`
    /// requests and responses and whose ends both want the next one
    /// notified: producers `start`, events `start + 1`, private bytes and
    /// padding zero (ring.h's `SHARED_RING_INIT` when `start` is 0).
    /// Slots are not touched.
    pub(super) fn init_header(&self, start: u32) {
        // Relaxed: the frontend initialises the page before it grants it
        // and advertises it in XenStore; those steps (system calls, the
        // store's own synchronisation) order these stores before anything
        // the backend does with the page.
        self.req_prod().store(start, Ordering::Relaxed);
        self.rsp_prod().store(start, Ordering::Relaxed);
        self.req_event()
            .store(start.wrapping_add(1), Ordering::Relaxed);
        self.rsp_event()
            .store(start.wrapping_add(1), Ordering::Relaxed);
        // `pvt` and the padding: everything after the four index fields.
        let pvt = RSP_EVENT_OFFSET + 4;
        self.region().fill(pvt, SRING_HEADER_SIZE - pvt, 0);
    }

    /// Byte offset of the slot of index `idx`.
    fn slot_offset(&self, idx: u32) -> usize {
        SRING_HEADER_SIZE + (idx & (self.size - 1)) as usize * self.slot
    }

    /// Copies the entry at index `idx` out of shared memory into `scratch`
    /// (once), and decodes it from there.
    pub(super) fn read_entry<T: RingEntry>(&self, idx: u32, scratch: &mut [u8]) -> T {
        let buf = &mut scratch[..T::SIZE];
        self.region().read(self.slot_offset(idx), buf);
        T::decode(buf)
    }

    /// Encodes `entry` into `scratch` and copies its [`RingEntry::SIZE`]
    /// bytes into the slot of index `idx` (the rest of the slot keeps what
    /// it held, as a C struct assignment into the union leaves it).
    pub(super) fn write_entry<T: RingEntry>(&self, idx: u32, entry: &T, scratch: &mut [u8]) {
        let buf = &mut scratch[..T::SIZE];
        buf.fill(0);
        entry.encode(buf);
        self.region().write(self.slot_offset(idx), buf);
    }
}

/// Publishes a producer index and decides the notification
/// (`RING_PUSH_*_AND_CHECK_NOTIFY`): store `new` into `prod`, full barrier,
/// read the peer's `event`, notify iff `event` lies in `(old, new]`. Counts
/// the decision in `stats` when there was anything new.
pub(super) fn publish(
    prod: &AtomicU32,
    event: &AtomicU32,
    old: u32,
    new: u32,
    stats: &mut super::RingStats,
) -> super::NotifyNeeded {
    // Release: a peer that loads this producer index (Acquire) also sees
    // the slots written before it (ring.h's write barrier), so it never
    // copies a slot we have not finished writing.
    prod.store(new, Ordering::Release);
    // Full barrier between publishing the producer and reading the peer's
    // event index; pairs with the peer's fence in its final check. Without
    // it our store could still be in flight while we read an old event as
    // the peer sets the event and reads an old producer: it sleeps, we do
    // not notify, the ring hangs.
    std::sync::atomic::fence(Ordering::SeqCst);
    // Relaxed: the fence above orders it; the value only decides the
    // notification.
    let event = event.load(Ordering::Relaxed);
    let notify = super::NotifyNeeded::from_indexes(old, new, event);
    if new != old {
        match notify {
            super::NotifyNeeded::Yes => stats.notifications += 1,
            super::NotifyNeeded::No => stats.suppressed += 1,
        }
    }
    notify
}
