//! Receive pools: a receiver posts page-sized slots to a peer, the peer
//! fills them, and the receiver takes the filled pages and re-arms the
//! slots. Two modes with one API:
//!
//! * [`RxMode::Transfer`] (Xen's page flipping, netif `feature-rx-flip`):
//!   each slot is a `GTF_accept_transfer` grant
//!   ([`Platform::offer_transfer_slot`]). The sender gives up a whole page
//!   ([`Platform::transfer_page`], `GNTTABOP_transfer`): the hypervisor
//!   commits the entry, hands the frame over, writes the frame number and
//!   marks the entry completed. The receiver takes the page (zero copy: it
//!   is now its own, no peer can touch it) and the slot is offered again
//!   under the same reference. Needs a platform with transfer (the
//!   simulated host; PV guests on Xen with `gnttab=transfer`).
//! * [`RxMode::Copy`] (netif `feature-rx-copy` / `request-rx-copy`): each
//!   slot is a page granted read-write ([`Platform::share_pages`]); the
//!   sender copies into it with [`Platform::grant_copy`]. The receiver
//!   copies the bytes out once (the page stays shared, so what is read is
//!   read once, then validated). Works wherever grant copy works (real Xen
//!   from user space).
//!
//! ```text
//!   receiver (RxPool)                    sender (RxFiller)
//!   new(): arm N slots, publish grefs -> learns (id, gref) per slot
//!                                        fill(gref, bytes):
//!                                          transfer: alloc page, write,
//!                                                    GNTTABOP_transfer
//!                                          copy:     GNTTABOP_copy
//!   complete(id, offset, len) <--------- tells the receiver (ring response)
//!     transfer: take the page, re-arm the slot (same gref)
//!     copy:     copy the bytes out
//!   -> RxPage (its frame goes back to the hypervisor when dropped)
//!   close(): every slot by the reclaim rule: not committed -> withdrawn;
//!            committed -> wait for completed, then take the frame
//! ```
//!
//! Invariants: every slot is armed (offered to the peer) from `new` until
//! `close` or drop, except inside `complete`; a page taken out of a slot is
//! owned by exactly one [`RxPage`], and [`RxPoolStats::pages_out`] counts
//! them; nothing the peer claims is trusted: a completion for a slot that
//! holds no page, or an offset and length outside the page, is a
//! [`RxPoolError::BadFill`] (the slot stays armed and any page that did
//! arrive is freed).

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::platform::{
    Access, CopyPtr, DomId, GnttabStatus, GrantCopy, GrantRef, LocalPages, Platform, PlatformError,
    SharedPages, TransferSlot,
};
use crate::shm::PAGE_SIZE;

/// How a receive pool's slots are filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RxMode {
    /// Accept-transfer slots filled by page transfer (zero copy).
    Transfer,
    /// Granted pages filled by grant copy.
    Copy,
}

impl RxMode {
    /// `"transfer"` or `"copy"`.
    pub fn name(self) -> &'static str {
        match self {
            RxMode::Transfer => "transfer",
            RxMode::Copy => "copy",
        }
    }
}

impl fmt::Display for RxMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for RxMode {
    type Err = String;
    fn from_str(s: &str) -> Result<RxMode, String> {
        match s {
            "transfer" | "flip" => Ok(RxMode::Transfer),
            "copy" => Ok(RxMode::Copy),
            other => Err(format!("unknown receive mode {other:?} (transfer or copy)")),
        }
    }
}

/// Errors of receive pools and fillers.
#[derive(Debug, thiserror::Error)]
pub enum RxPoolError {
    /// A platform operation failed.
    #[error("receive pool with domain {peer}: {what}: {source}")]
    Platform {
        /// The peer domain.
        peer: DomId,
        /// What was attempted.
        what: String,
        /// The platform's error.
        #[source]
        source: PlatformError,
    },
    /// The peer claimed a fill that does not hold: no page arrived, or the
    /// offset and length are outside the page.
    #[error("receive pool with domain {peer}: slot {id}: {why}")]
    BadFill {
        /// The peer domain.
        peer: DomId,
        /// The slot.
        id: u16,
        /// What was wrong.
        why: String,
    },
    /// A slot id outside the pool.
    #[error("receive pool with domain {peer}: no slot {id} (the pool has {count})")]
    NoSlot {
        /// The peer domain.
        peer: DomId,
        /// The id asked for.
        id: u16,
        /// Slots in the pool.
        count: usize,
    },
    /// A fill of more than a page.
    #[error("fill of {len} bytes into domain {peer}'s slot {gref}: at most {PAGE_SIZE} fit")]
    TooLong {
        /// The peer domain.
        peer: DomId,
        /// The slot's reference.
        gref: GrantRef,
        /// The length asked for.
        len: usize,
    },
    /// The hypervisor refused one copy or transfer.
    #[error("fill of domain {peer}'s slot {gref}: {status}")]
    Refused {
        /// The peer domain.
        peer: DomId,
        /// The slot's reference.
        gref: GrantRef,
        /// Xen's status.
        status: GnttabStatus,
    },
}

impl RxPoolError {
    fn platform(peer: DomId, what: impl Into<String>, source: PlatformError) -> RxPoolError {
        RxPoolError::Platform {
            peer,
            what: what.into(),
            source,
        }
    }
}

/// Result of receive-pool operations.
pub type Result<T, E = RxPoolError> = std::result::Result<T, E>;

#[derive(Debug, Default)]
struct Counters {
    filled: AtomicU64,
    bytes: AtomicU64,
    bad_fills: AtomicU64,
    pages_out: AtomicU64,
}

/// A receive pool's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RxPoolStats {
    /// Slots in the pool.
    pub slots: usize,
    /// Slots offered to the peer now.
    pub armed: usize,
    /// Pages taken out of slots and not dropped yet (transfer mode).
    pub pages_out: u64,
    /// Fills taken so far.
    pub filled: u64,
    /// Bytes in them.
    pub bytes: u64,
    /// Fills refused ([`RxPoolError::BadFill`]).
    pub bad_fills: u64,
}

enum Slots {
    Transfer(Vec<Option<Box<dyn TransferSlot>>>),
    Copy(Box<dyn SharedPages>),
}

/// The receiver's side: `count` slots offered to `peer`.
pub struct RxPool {
    peer: DomId,
    mode: RxMode,
    count: usize,
    slots: Slots,
    counters: Arc<Counters>,
}

impl fmt::Debug for RxPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RxPool")
            .field("peer", &self.peer)
            .field("mode", &self.mode)
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

impl RxPool {
    /// Offers `count` slots (ids `0..count`) to `peer` in `mode`.
    pub fn new(platform: &dyn Platform, peer: DomId, count: u16, mode: RxMode) -> Result<RxPool> {
        let count = usize::from(count);
        let slots = match mode {
            RxMode::Transfer => {
                let mut v = Vec::with_capacity(count);
                for i in 0..count {
                    let s = platform.offer_transfer_slot(peer).map_err(|e| {
                        RxPoolError::platform(peer, format!("offering transfer slot {i}"), e)
                    })?;
                    v.push(Some(s));
                }
                Slots::Transfer(v)
            }
            RxMode::Copy => Slots::Copy(
                platform
                    .share_pages(peer, count.max(1), Access::ReadWrite)
                    .map_err(|e| {
                        RxPoolError::platform(peer, format!("sharing {count} receive pages"), e)
                    })?,
            ),
        };
        Ok(RxPool {
            peer,
            mode,
            count,
            slots,
            counters: Arc::default(),
        })
    }

    /// The peer the slots are offered to.
    pub fn peer(&self) -> DomId {
        self.peer
    }

    /// How the slots are filled.
    pub fn mode(&self) -> RxMode {
        self.mode
    }

    /// Slots in the pool.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True for a pool of no slots.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn check_id(&self, id: u16) -> Result<usize> {
        let i = usize::from(id);
        if i >= self.count {
            return Err(RxPoolError::NoSlot {
                peer: self.peer,
                id,
                count: self.count,
            });
        }
        Ok(i)
    }

    /// Slot `id`'s grant reference (what the peer is told).
    pub fn gref(&self, id: u16) -> Result<GrantRef> {
        let i = self.check_id(id)?;
        match &self.slots {
            Slots::Transfer(v) => v[i].as_ref().map(|s| s.gref()).ok_or(RxPoolError::BadFill {
                peer: self.peer,
                id,
                why: "the slot is not armed".into(),
            }),
            Slots::Copy(s) => Ok(s.refs()[i]),
        }
    }

    /// Takes the fill of slot `id` that the peer reports as `len` bytes at
    /// `offset`, and re-arms the slot (same reference). Transfer mode: the
    /// transferred page, zero copy; copy mode: the bytes copied out of the
    /// shared page, once.
    ///
    /// A completion that does not hold (no page arrived, bytes outside the
    /// page) is a [`RxPoolError::BadFill`]; the slot stays armed.
    pub fn complete(&mut self, id: u16, offset: u16, len: u16) -> Result<RxPage> {
        let i = self.check_id(id)?;
        let (offset, len) = (usize::from(offset), usize::from(len));
        let peer = self.peer;
        let bad = |why: String| RxPoolError::BadFill { peer, id, why };
        let in_page = offset.checked_add(len).is_some_and(|end| end <= PAGE_SIZE);
        let r = match &mut self.slots {
            Slots::Transfer(v) => {
                let slot = v[i]
                    .as_mut()
                    .ok_or_else(|| bad("the slot is not armed".into()))?;
                let page = slot
                    .take()
                    .map_err(|e| RxPoolError::platform(peer, format!("taking slot {id}"), e))?;
                match page {
                    None => Err(bad(
                        "the peer reported a fill but no page was transferred".into()
                    )),
                    Some(p) if !in_page => {
                        drop(p);
                        Err(bad(format!(
                            "{len} bytes at offset {offset} do not fit in a page"
                        )))
                    }
                    Some(page) => {
                        self.counters.pages_out.fetch_add(1, Ordering::Relaxed);
                        Ok(RxPage {
                            inner: PageInner::Frame { page, offset, len },
                            counters: self.counters.clone(),
                        })
                    }
                }
            }
            Slots::Copy(share) => {
                if !in_page {
                    Err(bad(format!(
                        "{len} bytes at offset {offset} do not fit in a page"
                    )))
                } else {
                    let mut buf = vec![0u8; len];
                    share.memory().read(i * PAGE_SIZE + offset, &mut buf);
                    Ok(RxPage {
                        inner: PageInner::Bytes(Bytes::from(buf)),
                        counters: self.counters.clone(),
                    })
                }
            }
        };
        match &r {
            Ok(_) => {
                self.counters.filled.fetch_add(1, Ordering::Relaxed);
                self.counters.bytes.fetch_add(len as u64, Ordering::Relaxed);
            }
            Err(RxPoolError::BadFill { .. }) => {
                self.counters.bad_fills.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {}
        }
        r
    }

    /// Slot `id` was answered without data (the peer reported an error):
    /// frees any page that arrived anyway and leaves the slot armed.
    pub fn discard(&mut self, id: u16) -> Result<()> {
        let i = self.check_id(id)?;
        if let Slots::Transfer(v) = &mut self.slots {
            if let Some(slot) = v[i].as_mut() {
                let page = slot.take().map_err(|e| {
                    RxPoolError::platform(self.peer, format!("taking slot {id}"), e)
                })?;
                drop(page);
            }
        }
        Ok(())
    }

    /// Counters now.
    pub fn stats(&self) -> RxPoolStats {
        let armed = match &self.slots {
            Slots::Transfer(v) => v.iter().filter(|s| s.is_some()).count(),
            Slots::Copy(_) => self.count,
        };
        let c = &self.counters;
        RxPoolStats {
            slots: self.count,
            armed,
            pages_out: c.pages_out.load(Ordering::Relaxed),
            filled: c.filled.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            bad_fills: c.bad_fills.load(Ordering::Relaxed),
        }
    }

    /// A handle on the counters that outlives the pool.
    pub fn stats_handle(&self) -> RxStatsHandle {
        RxStatsHandle {
            counters: self.counters.clone(),
            slots: self.count,
        }
    }

    /// Withdraws every slot by the reclaim rule and returns the pages that
    /// were committed meanwhile (a late fill: transfer mode only). Copy
    /// mode ends the share (refused while the peer maps a page; the pages
    /// are then released later, see [`SharedPages::end`]).
    pub fn close(self) -> Result<Vec<RxPage>> {
        let peer = self.peer;
        let mut late = Vec::new();
        match self.slots {
            Slots::Transfer(v) => {
                let mut first_err = None;
                for (i, s) in v.into_iter().enumerate() {
                    let Some(s) = s else { continue };
                    match s.reclaim() {
                        Ok(None) => {}
                        Ok(Some(page)) => {
                            self.counters.pages_out.fetch_add(1, Ordering::Relaxed);
                            late.push(RxPage {
                                inner: PageInner::Frame {
                                    page,
                                    offset: 0,
                                    len: 0,
                                },
                                counters: self.counters.clone(),
                            });
                        }
                        Err(e) => {
                            first_err.get_or_insert(RxPoolError::platform(
                                peer,
                                format!("reclaiming slot {i}"),
                                e,
                            ));
                        }
                    }
                }
                if let Some(e) = first_err {
                    return Err(e);
                }
            }
            Slots::Copy(share) => {
                if let Err((rest, e)) = share.end() {
                    // Dropping it defers the end until the peer unmaps.
                    drop(rest);
                    return Err(RxPoolError::platform(peer, "ending the receive pages", e));
                }
            }
        }
        Ok(late)
    }
}

/// The counters of a pool, readable after the pool is gone (pages still
/// out keep counting down as they are dropped).
#[derive(Debug, Clone)]
pub struct RxStatsHandle {
    counters: Arc<Counters>,
    slots: usize,
}

impl RxStatsHandle {
    /// Counters now (`armed` is not known here and reads 0).
    pub fn stats(&self) -> RxPoolStats {
        let c = &self.counters;
        RxPoolStats {
            slots: self.slots,
            armed: 0,
            pages_out: c.pages_out.load(Ordering::Relaxed),
            filled: c.filled.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            bad_fills: c.bad_fills.load(Ordering::Relaxed),
        }
    }
}

enum PageInner {
    /// A page transferred to us: ours alone.
    Frame {
        page: Box<dyn LocalPages>,
        offset: usize,
        len: usize,
    },
    /// Bytes copied out of a shared page.
    Bytes(Bytes),
}

/// One filled slot's data. In transfer mode it owns the transferred page
/// (its frame goes back to the hypervisor when this is dropped); in copy
/// mode the bytes copied out.
pub struct RxPage {
    inner: PageInner,
    counters: Arc<Counters>,
}

impl fmt::Debug for RxPage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RxPage")
            .field("len", &self.len())
            .field(
                "transferred",
                &matches!(self.inner, PageInner::Frame { .. }),
            )
            .finish()
    }
}

impl RxPage {
    /// Bytes of data.
    pub fn len(&self) -> usize {
        match &self.inner {
            PageInner::Frame { len, .. } => *len,
            PageInner::Bytes(b) => b.len(),
        }
    }

    /// True when it holds no data.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies the data into `out` (which must be [`RxPage::len`] long).
    pub fn read(&self, out: &mut [u8]) {
        match &self.inner {
            PageInner::Frame { page, offset, len } => {
                page.memory().read(*offset, &mut out[..*len]);
            }
            PageInner::Bytes(b) => out.copy_from_slice(b),
        }
    }

    /// The data as [`Bytes`] (transfer mode: copied out of the page, which
    /// is then freed).
    pub fn into_bytes(self) -> Bytes {
        match &self.inner {
            PageInner::Bytes(b) => b.clone(),
            PageInner::Frame { .. } => {
                let mut v = vec![0u8; self.len()];
                self.read(&mut v);
                Bytes::from(v)
            }
        }
    }
}

impl Drop for RxPage {
    fn drop(&mut self) {
        if matches!(self.inner, PageInner::Frame { .. }) {
            self.counters.pages_out.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Gives `page` (one page of ours) to `peer` through its accept-transfer
/// slot `gref`, with Xen's semantics: the page is ours no longer, whether
/// the transfer succeeds or not.
pub fn transfer(
    platform: &dyn Platform,
    page: Box<dyn LocalPages>,
    peer: DomId,
    gref: GrantRef,
) -> Result<()> {
    platform
        .transfer_page(page, peer, gref)
        .map_err(|e| match e {
            PlatformError::Gnttab { status, .. } => RxPoolError::Refused { peer, gref, status },
            e => RxPoolError::platform(peer, format!("transfer into slot {gref}"), e),
        })
}

/// True if this platform can offer accept-transfer slots (and so take
/// part in [`RxMode::Transfer`]); probes by offering one to itself and
/// withdrawing it.
pub fn transfer_supported(platform: &dyn Platform) -> bool {
    match platform.offer_transfer_slot(platform.domid()) {
        Ok(slot) => slot.reclaim().is_ok(),
        Err(_) => false,
    }
}

/// The sender's side: fills a peer's slots in its pool's mode.
pub struct RxFiller {
    platform: Arc<dyn Platform>,
    peer: DomId,
    mode: RxMode,
    staging: Option<Box<dyn LocalPages>>,
    batch: usize,
}

impl fmt::Debug for RxFiller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RxFiller")
            .field("peer", &self.peer)
            .field("mode", &self.mode)
            .field("batch", &self.batch)
            .finish_non_exhaustive()
    }
}

impl RxFiller {
    /// A filler for `peer`'s slots; copy mode stages up to `batch` fills
    /// per [`RxFiller::fill_batch`] call in pages of our own.
    pub fn new(
        platform: Arc<dyn Platform>,
        peer: DomId,
        mode: RxMode,
        batch: usize,
    ) -> Result<RxFiller> {
        let batch = batch.max(1);
        let staging = match mode {
            RxMode::Transfer => None,
            RxMode::Copy => Some(platform.alloc_pages(batch).map_err(|e| {
                RxPoolError::platform(peer, format!("allocating {batch} staging pages"), e)
            })?),
        };
        Ok(RxFiller {
            platform,
            peer,
            mode,
            staging,
            batch,
        })
    }

    /// The mode.
    pub fn mode(&self) -> RxMode {
        self.mode
    }

    /// The most fills one [`RxFiller::fill_batch`] call takes.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Fills slot `gref` with `data` (at offset 0).
    pub fn fill(&mut self, gref: GrantRef, data: &[u8]) -> Result<()> {
        self.fill_batch(&[(gref, data)])?
            .pop()
            .expect("one result per fill")
    }

    /// Fills each `(gref, data)` (at offset 0; at most [`RxFiller::batch`]
    /// of them): one result per fill. Copy mode submits one batch of grant
    /// copies; transfer mode one page transfer per fill. The outer error is
    /// a batch that could not be submitted at all.
    pub fn fill_batch(&mut self, fills: &[(GrantRef, &[u8])]) -> Result<Vec<Result<()>>> {
        if fills.len() > self.batch {
            return Err(RxPoolError::platform(
                self.peer,
                "fill batch",
                PlatformError::InvalidArgument(format!(
                    "{} fills in one batch, at most {}",
                    fills.len(),
                    self.batch
                )),
            ));
        }
        let peer = self.peer;
        let too_long = |gref, len| RxPoolError::TooLong { peer, gref, len };
        match self.mode {
            RxMode::Transfer => Ok(fills
                .iter()
                .map(|&(gref, data)| {
                    if data.len() > PAGE_SIZE {
                        return Err(too_long(gref, data.len()));
                    }
                    let page = self.platform.alloc_pages(1).map_err(|e| {
                        RxPoolError::platform(peer, "allocating a page to transfer", e)
                    })?;
                    page.memory().write(0, data);
                    transfer(self.platform.as_ref(), page, peer, gref)
                })
                .collect()),
            RxMode::Copy => {
                let staging = self.staging.as_deref().expect("copy mode stages");
                let mut results: Vec<Result<()>> = Vec::with_capacity(fills.len());
                let mut ops = Vec::with_capacity(fills.len());
                let mut which = Vec::with_capacity(fills.len());
                for (i, &(gref, data)) in fills.iter().enumerate() {
                    if data.len() > PAGE_SIZE {
                        results.push(Err(too_long(gref, data.len())));
                        continue;
                    }
                    results.push(Ok(()));
                    if data.is_empty() {
                        continue;
                    }
                    staging.memory().write(i * PAGE_SIZE, data);
                    ops.push(GrantCopy {
                        source: CopyPtr::Local {
                            pages: staging,
                            offset: i * PAGE_SIZE,
                        },
                        dest: CopyPtr::Grant {
                            domid: peer,
                            gref,
                            offset: 0,
                        },
                        len: data.len() as u16,
                        status: GnttabStatus::Okay,
                    });
                    which.push(i);
                }
                if !ops.is_empty() {
                    self.platform
                        .grant_copy(&mut ops)
                        .map_err(|e| RxPoolError::platform(peer, "submitting grant copies", e))?;
                }
                for (op, i) in ops.iter().zip(which) {
                    if op.status != GnttabStatus::Okay {
                        results[i] = Err(RxPoolError::Refused {
                            peer,
                            gref: fills[i].0,
                            status: op.status,
                        });
                    }
                }
                Ok(results)
            }
        }
    }
}

#[cfg(test)]
mod tests;
