//! Request/response rings compatible with Xen's `public/io/ring.h`, sans-IO.
//!
//! A ring lives in 1, 2, 4, 8 or 16 shared pages (`ring-page-order` 0 to 4):
//! a 64-byte header ([`crate::abi::ring::SringHeader`]) followed by a power
//! of two of slots, each holding a request or a response (the slot is the
//! size of the larger of the two). The frontend ([`FrontRing`]) produces
//! requests and consumes responses; the backend ([`BackRing`]) consumes
//! requests and produces responses in the same slots. Nothing here blocks,
//! sleeps or signals: `push_*` returns [`NotifyNeeded`] and the caller sends
//! the event-channel notification; the caller also decides when to look at
//! the ring again (after a notification, or after `final_check_*` said there
//! is more work).
//!
//! ```
//! use xenring::abi::blkif::{BlkifRequest, BlkifResponse};
//! use xenring::ring::{BackRing, FrontRing, NotifyNeeded};
//! use xenring::shm::{Region, PAGE_SIZE};
//!
//! type Req = BlkifRequest<[u8; 112]>;
//! type Rsp = BlkifResponse<[u8; 16]>;
//! // In real use each end maps the granted page(s) in its own domain.
//! let page = Region::anonymous(PAGE_SIZE)?;
//! let mut front = FrontRing::<Req, Rsp, _>::init(&page)?;
//! let mut back = BackRing::<Req, Rsp, _>::new(&page)?;
//! assert_eq!(front.size(), 32);
//!
//! let mut req = BlkifRequest::new_unchecked([0u8; 112]);
//! req.set_id(7);
//! front.put_request(&req)?;
//! // The backend asked for an event on the first request: kick it.
//! assert_eq!(front.push_requests()?, NotifyNeeded::Yes);
//!
//! let got = back.take_request()?.expect("pushed");
//! let mut rsp = BlkifResponse::new_unchecked([0u8; 16]);
//! rsp.set_id(got.id());
//! back.put_response(&rsp)?;
//! if back.push_responses()?.needed() {
//!     // notify the frontend's event channel
//! }
//! assert_eq!(front.take_response()?.map(|r| r.id()), Some(7));
//! // Nothing more: ask for an event, check once more, then sleep.
//! assert!(!front.final_check_for_responses()?);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! | file | what |
//! |---|---|
//! | `entry.rs` | [`RingEntry`], the fixed-size encoding of a request or response, and its implementations for the `abi` views |
//! | `shared.rs` | the shared header and slots: geometry, atomic index fields, one-copy slot access |
//! | `front.rs` | [`FrontRing`] |
//! | `back.rs` | [`BackRing`] |
//! | `driver.rs` | what the async ends share: [`AsyncRingError`], [`Tagged`], [`RingMemory`], liveness bytes, set-up helpers ([`share_ring`], [`map_ring`]) |
//! | `async_front.rs` | [`RingClient`] (calls matched by id; [`RequestSink`] + [`ResponseStream`]) on tokio |
//! | `async_back.rs` | [`RingServer`] (a `Stream` of requests) and [`Responder`] on tokio |
//! | `echo.rs` | [`echo::Msg64`] and an echo backend, for tests and benchmarks |
//! | `keys.rs` | XenStore keys of (multi-page) rings: `ring-ref`, `ring-ref%u`, `ring-page-order`, `max-ring-page-order` |
//!
//! # Invariants
//!
//! * Indexes are free-running `u32`s compared with wrapping arithmetic; index
//!   `i` lives in slot `i & (size - 1)`. Shared: `req_prod`, `req_event`
//!   (frontend writes `req_prod`, backend writes `req_event`), `rsp_prod`,
//!   `rsp_event` (backend writes `rsp_prod`, frontend writes `rsp_event`).
//!   Private: the frontend's `req_prod_pvt` and `rsp_cons`, the backend's
//!   `rsp_prod_pvt` and `req_cons`, exactly as in ring.h.
//! * On the frontend `rsp_cons <= rsp_prod(seen) <= req_prod(pushed) <=
//!   req_prod_pvt <= rsp_cons + size`: at most `size` requests are
//!   outstanding and a request that would overwrite an unanswered slot is
//!   refused ([`RingError::Full`]).
//! * On the backend `rsp_prod_pvt <= req_cons <= req_prod(seen) <=
//!   rsp_prod_pvt + size`: a response goes only into the slot of a consumed
//!   request ([`RingError::NothingToAnswer`] otherwise).
//! * The four shared index fields are only touched through atomics (via
//!   [`crate::shm::Region::atomic_u32`]) with the orderings below. Slots are
//!   copied with [`crate::shm::Region::read`]/[`crate::shm::Region::write`];
//!   an entry is copied out of shared memory once, into private memory, and
//!   decoded from the copy (XSA-155: no double fetch).
//! * The peer's producer index is read once per refresh, and checked before
//!   it is used: a frontend's `req_prod` may be at most `size` ahead of the
//!   backend's `rsp_prod_pvt` and never behind `req_cons`; a backend's
//!   `rsp_prod` may be neither behind `rsp_cons` nor ahead of the requests
//!   pushed. A bad index is [`RingError::RequestProducer`] or
//!   [`RingError::ResponseProducer`], and the ring is then closed: every
//!   later operation returns the same error. Nothing the peer writes can
//!   make these types hang, panic or reach outside the ring's slots (slot
//!   offsets are masked indexes).
//! * A peer's event field (`req_event` seen by the frontend, `rsp_event` by
//!   the backend) is only ever an input to the notify decision: a peer
//!   writing garbage there can only cost itself notifications.
//!
//! # The notify protocol
//!
//! Shown for requests (frontend to backend); responses are the mirror image
//! with `rsp_prod`/`rsp_event`.
//!
//! ```text
//!  producer (FrontRing)                         consumer (BackRing)
//!  ====================                         ===================
//!  put_request() x N   copy into slots
//!                      req_prod_pvt += N
//!  push_requests():
//!    old = last pushed, new = req_prod_pvt
//!    req_prod.store(new, Release) ------------> req_prod.load(Acquire)
//!                                                 take_request() until none
//!    fence(SeqCst)  (A)                         final_check_for_requests():
//!    ev = req_event.load(Relaxed) <-----------    req_event.store(req_cons + 1)
//!    notify iff new - ev < new - old              fence(SeqCst)  (B)
//!      i.e. ev in (old, new]                      req_prod.load(Acquire)
//!      |                                          more? take them : sleep
//!      +-- NotifyNeeded::Yes: caller kicks -----> wakes up, takes requests
//! ```
//!
//! The race the two full fences close: without them the producer's store
//! of `req_prod` and the consumer's store of `req_event` could both still be
//! in flight while each side loads the other's field, so the consumer sees
//! no new request and sleeps, while the producer sees an old event index and
//! does not notify: a lost wakeup and a hung ring. With a `SeqCst` fence
//! between each side's store and its load, at least one side sees the
//! other's store: either the consumer finds the request, or the producer
//! finds the event index and notifies. The Release store / Acquire load of
//! the producer index is ring.h's write barrier: entries are visible before
//! the index that covers them.
//!
//! Batching: several puts, then one push. A consumer asking for an event
//! sets it to `consumer + 1`, so a batch of N that crosses it notifies once;
//! a consumer that is still busy (it has not asked) gets no notification.
//!
//! # Differences from ring.h, on purpose
//!
//! * The "old" producer of the notify rule is kept privately (the value this
//!   side last pushed) instead of being read back from the shared page, so
//!   a peer that scribbles our producer field cannot steer our decisions.
//!   Against a well-behaved peer the two are the same value.
//! * ring.h's overflow checks only compare with the ring size; the checks
//!   here are stricter (a producer behind the consumer, or responses to
//!   requests never pushed, are errors too) and they close the ring.
//! * ring.h lets a careless caller overwrite an unanswered slot; here the
//!   put is refused.

mod async_back;
mod async_front;
mod back;
mod driver;
pub mod echo;
mod entry;
mod front;
pub mod keys;
mod shared;

pub use async_back::{Responder, RingServer};
pub use async_front::{RequestSink, ResponseStream, RingClient};
pub use back::BackRing;
pub use driver::{
    map_ring, share_ring, AsyncRingError, RingEndpoint, RingMemory, Tagged, BACK_ATTACHED_BYTE,
    BACK_CLOSED_BYTE, BACK_LIVE_BYTE, FRONT_ATTACHED_BYTE, FRONT_CLOSED_BYTE, FRONT_LIVE_BYTE,
};
pub use entry::RingEntry;
pub use front::FrontRing;
pub use shared::MAX_RING_PAGES;

/// Whether the peer must be sent an event-channel notification after a
/// push.
#[must_use = "the peer may be waiting for a notification"]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NotifyNeeded {
    /// The peer asked to be woken within the pushed range: notify it.
    Yes,
    /// The peer did not ask (it is still busy, or nothing new was pushed):
    /// the notification is suppressed.
    No,
}

impl NotifyNeeded {
    /// True for [`NotifyNeeded::Yes`].
    pub fn needed(self) -> bool {
        self == NotifyNeeded::Yes
    }

    /// ring.h's rule: notify iff the peer's event index `event` lies in
    /// `(old, new]`, computed as `new - event < new - old` in wrapping u32
    /// arithmetic.
    pub fn from_indexes(old: u32, new: u32, event: u32) -> NotifyNeeded {
        if new.wrapping_sub(event) < new.wrapping_sub(old) {
            NotifyNeeded::Yes
        } else {
            NotifyNeeded::No
        }
    }
}

/// Counters of one ring end, for observability.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RingStats {
    /// Entries this end put on the ring (requests or responses).
    pub produced: u64,
    /// Entries this end took off the ring.
    pub consumed: u64,
    /// Pushes that returned [`NotifyNeeded::Yes`].
    pub notifications: u64,
    /// Pushes of new entries that returned [`NotifyNeeded::No`].
    pub suppressed: u64,
}

/// Errors of the ring module.
///
/// [`RingError::RequestProducer`] and [`RingError::ResponseProducer`] are
/// fatal: the ring end that saw them is closed and returns the same error
/// from every later operation ([`RingError::is_fatal`]). [`RingError::Full`]
/// and [`RingError::NothingToAnswer`] refuse one call and change nothing.
/// The others come from constructors and key parsing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// The region is not 1, 2, 4, 8 or 16 pages long.
    #[error("ring region of {len} bytes: must be 1, 2, 4, 8 or 16 pages of 4096 bytes")]
    RegionSize {
        /// The region's length in bytes.
        len: usize,
    },
    /// The region is mapped read-only; both ends write to a ring.
    #[error("ring region is mapped read-only: both ends of a ring write to it")]
    ReadOnly,
    /// Not even one slot fits (or the entry types have size 0).
    #[error("ring slots of {slot} bytes cannot make a ring in {len} bytes")]
    EntrySize {
        /// Slot size: the larger entry, rounded up to the larger alignment.
        slot: usize,
        /// The region's length in bytes.
        len: usize,
    },
    /// Frontend: every slot holds an outstanding request; nothing was
    /// written.
    #[error("ring front end: request ring full ({size} requests outstanding)")]
    Full {
        /// Number of slots.
        size: u32,
    },
    /// Backend: every consumed request has its response already; nothing
    /// was written.
    #[error(
        "ring back end: no consumed request is waiting for a response (req_cons {req_cons:#x})"
    )]
    NothingToAnswer {
        /// Requests consumed so far (= responses produced so far).
        req_cons: u32,
    },
    /// Backend: the frontend's `req_prod` is more than the ring size ahead
    /// of the responses produced, or behind the requests consumed. Fatal.
    #[error(
        "ring back end: request producer {req_prod:#x} from the peer is out of range \
         (req_cons {req_cons:#x}, rsp_prod_pvt {rsp_prod_pvt:#x}, ring of {size}); ring closed"
    )]
    RequestProducer {
        /// The `req_prod` read from the shared page.
        req_prod: u32,
        /// Requests consumed so far.
        req_cons: u32,
        /// Responses produced so far.
        rsp_prod_pvt: u32,
        /// Number of slots.
        size: u32,
    },
    /// Frontend: the backend's `rsp_prod` is behind the responses consumed,
    /// or ahead of the requests pushed. Fatal.
    #[error(
        "ring front end: response producer {rsp_prod:#x} from the peer is out of range \
         (rsp_cons {rsp_cons:#x}, requests pushed up to {req_prod:#x}); ring closed"
    )]
    ResponseProducer {
        /// The `rsp_prod` read from the shared page.
        rsp_prod: u32,
        /// Responses consumed so far.
        rsp_cons: u32,
        /// Requests pushed so far.
        req_prod: u32,
    },
    /// A `ring-page-order` (or `max-ring-page-order`) value read from
    /// XenStore is not a decimal number in range.
    #[error("xenstore key {key}: value {value:?} is not a page order from 0 to {max}")]
    PageOrder {
        /// The key read.
        key: &'static str,
        /// The value found (truncated to 32 bytes).
        value: String,
        /// The largest order accepted.
        max: u32,
    },
}

impl RingError {
    /// Whether the error closed the ring (a misbehaving peer).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            RingError::RequestProducer { .. } | RingError::ResponseProducer { .. }
        )
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_async;
