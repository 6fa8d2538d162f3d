//! The frontend half of a ring: produces requests, consumes responses.

use std::borrow::Borrow;
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{fence, Ordering};

use super::shared::{publish, Shared};
use super::{NotifyNeeded, RingEntry, RingError, RingStats};
use crate::shm::Region;

/// The frontend of a request/response ring (ring.h's `FRONT_RING_*` and
/// `struct NAME_front_ring`): private `req_prod_pvt` and `rsp_cons` over
/// the shared page(s) in `M` (a [`Region`], `&Region`, `Arc<Region>`, ...).
///
/// Requests are written with [`FrontRing::put_request`] and published with
/// [`FrontRing::push_requests`], which says whether to notify the backend.
/// Responses are taken with [`FrontRing::take_response`]; before sleeping,
/// [`FrontRing::final_check_for_responses`] asks for a notification and
/// checks once more. See the module docs for the protocol and its checks.
pub struct FrontRing<Req, Rsp, M: Borrow<Region> = Region> {
    shared: Shared<M>,
    /// Requests written into slots (published or not).
    req_prod_pvt: u32,
    /// Requests published in `req_prod` (the "old" of the notify rule).
    req_prod_pushed: u32,
    /// Responses taken.
    rsp_cons: u32,
    /// The last `rsp_prod` read and accepted.
    rsp_prod_seen: u32,
    /// Set when the peer broke the protocol: the ring is closed.
    error: Option<RingError>,
    /// Private copy of one slot.
    scratch: Box<[u8]>,
    stats: RingStats,
    _types: PhantomData<fn(&Req) -> Rsp>,
}

impl<Req, Rsp, M: Borrow<Region>> fmt::Debug for FrontRing<Req, Rsp, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrontRing")
            .field("shared", &self.shared)
            .field("req_prod_pvt", &self.req_prod_pvt)
            .field("req_prod_pushed", &self.req_prod_pushed)
            .field("rsp_cons", &self.rsp_cons)
            .field("rsp_prod_seen", &self.rsp_prod_seen)
            .field("error", &self.error)
            .field("stats", &self.stats)
            .finish()
    }
}

impl<Req: RingEntry, Rsp: RingEntry, M: Borrow<Region>> FrontRing<Req, Rsp, M> {
    /// Initialises the shared header of a fresh ring in `mem` and attaches
    /// to it (ring.h's `XEN_FRONT_RING_INIT`): producers 0, event fields 1.
    /// Only the frontend initialises the header, before granting the pages.
    pub fn init(mem: M) -> Result<Self, RingError> {
        Self::init_at(mem, 0)
    }

    /// Like [`FrontRing::init`], but the indexes start at `start`
    /// (producers `start`, event fields `start + 1`, private indexes
    /// `start`): the state of a ring that has already carried `start`
    /// requests. `init_at(mem, 0)` is `init(mem)`. Useful to test index
    /// wrap-around.
    pub fn init_at(mem: M, start: u32) -> Result<Self, RingError> {
        let ring = Self::attach(mem, start)?;
        ring.shared.init_header(start);
        Ok(ring)
    }

    /// Attaches to a ring whose header is already set up, with both private
    /// indexes at `start` (ring.h's `FRONT_RING_ATTACH`): no request
    /// outstanding, no response unconsumed. The header is not touched.
    pub fn attach(mem: M, start: u32) -> Result<Self, RingError> {
        let shared = Shared::new::<Req, Rsp>(mem)?;
        let scratch = vec![0u8; shared.slot()].into_boxed_slice();
        Ok(FrontRing {
            shared,
            req_prod_pvt: start,
            req_prod_pushed: start,
            rsp_cons: start,
            rsp_prod_seen: start,
            error: None,
            scratch,
            stats: RingStats::default(),
            _types: PhantomData,
        })
    }

    /// Number of slots (a power of two).
    pub fn size(&self) -> u32 {
        self.shared.size()
    }

    /// Slots free for new requests: the ring size minus the requests put
    /// and not yet answered by a taken response (`RING_FREE_REQUESTS`).
    pub fn free_requests(&self) -> u32 {
        self.size() - self.req_prod_pvt.wrapping_sub(self.rsp_cons)
    }

    /// Whether [`FrontRing::put_request`] would be refused as full.
    pub fn is_full(&self) -> bool {
        self.free_requests() == 0
    }

    /// Requests put but not yet pushed.
    pub fn unpushed(&self) -> u32 {
        self.req_prod_pvt.wrapping_sub(self.req_prod_pushed)
    }

    /// The private request producer (`req_prod_pvt`).
    pub fn req_prod_pvt(&self) -> u32 {
        self.req_prod_pvt
    }

    /// The private response consumer (`rsp_cons`).
    pub fn rsp_cons(&self) -> u32 {
        self.rsp_cons
    }

    /// The error that closed the ring, if the peer broke the protocol.
    pub fn error(&self) -> Option<&RingError> {
        self.error.as_ref()
    }

    /// Counters of this end.
    pub fn stats(&self) -> RingStats {
        self.stats
    }

    /// The shared memory.
    pub fn region(&self) -> &Region {
        self.shared.region()
    }

    /// Writes `req` into the next free slot (not yet visible to the
    /// backend: see [`FrontRing::push_requests`]). Refused with
    /// [`RingError::Full`] when every slot holds an outstanding request.
    pub fn put_request(&mut self, req: &Req) -> Result<(), RingError> {
        self.check_open()?;
        if self.is_full() {
            return Err(RingError::Full { size: self.size() });
        }
        self.shared
            .write_entry(self.req_prod_pvt, req, &mut self.scratch);
        self.req_prod_pvt = self.req_prod_pvt.wrapping_add(1);
        self.stats.produced += 1;
        Ok(())
    }

    /// Publishes the requests put since the last push and says whether the
    /// backend must be notified (`RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`).
    pub fn push_requests(&mut self) -> Result<NotifyNeeded, RingError> {
        self.check_open()?;
        let old = self.req_prod_pushed;
        let new = self.req_prod_pvt;
        let notify = publish(
            self.shared.req_prod(),
            self.shared.req_event(),
            old,
            new,
            &mut self.stats,
        );
        self.req_prod_pushed = new;
        Ok(notify)
    }

    /// Responses the backend has pushed and we have not taken
    /// (`RING_HAS_UNCONSUMED_RESPONSES`), after checking the backend's
    /// `rsp_prod`.
    pub fn unconsumed_responses(&mut self) -> Result<u32, RingError> {
        self.check_open()?;
        self.refresh()
    }

    /// Takes the next response, copied out of its slot once, or `None` when
    /// the backend has pushed no more.
    pub fn take_response(&mut self) -> Result<Option<Rsp>, RingError> {
        self.check_open()?;
        if self.rsp_cons == self.rsp_prod_seen && self.refresh()? == 0 {
            return Ok(None);
        }
        let rsp = self.shared.read_entry(self.rsp_cons, &mut self.scratch);
        self.rsp_cons = self.rsp_cons.wrapping_add(1);
        self.stats.consumed += 1;
        Ok(Some(rsp))
    }

    /// Before sleeping: if no response is pending, ask to be notified of
    /// the next one (`rsp_event = rsp_cons + 1`) and check again
    /// (`RING_FINAL_CHECK_FOR_RESPONSES`). True means responses are
    /// pending: take them instead of sleeping.
    pub fn final_check_for_responses(&mut self) -> Result<bool, RingError> {
        self.check_open()?;
        if self.refresh()? > 0 {
            return Ok(true);
        }
        // Relaxed: the fence below orders it before the second check.
        self.shared
            .rsp_event()
            .store(self.rsp_cons.wrapping_add(1), Ordering::Relaxed);
        // Full barrier between setting rsp_event and re-reading rsp_prod;
        // pairs with the backend's fence in push_responses. Without it a
        // response pushed right now could be missed by our re-check while
        // the backend reads our old rsp_event and does not notify: we would
        // sleep on a pending response.
        fence(Ordering::SeqCst);
        Ok(self.refresh()? > 0)
    }

    fn check_open(&self) -> Result<(), RingError> {
        match &self.error {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Reads the backend's `rsp_prod` once, checks it, and returns the
    /// number of responses not yet taken. A `rsp_prod` behind `rsp_cons`
    /// or ahead of the requests pushed closes the ring.
    fn refresh(&mut self) -> Result<u32, RingError> {
        // Acquire: pairs with the backend's Release store in
        // push_responses, so the response slots up to rsp_prod are visible
        // before we copy them (ring.h's read barrier after reading the
        // producer).
        let rsp_prod = self.shared.rsp_prod().load(Ordering::Acquire);
        let pending = rsp_prod.wrapping_sub(self.rsp_cons);
        let outstanding = self.req_prod_pushed.wrapping_sub(self.rsp_cons);
        if pending > outstanding {
            let e = RingError::ResponseProducer {
                rsp_prod,
                rsp_cons: self.rsp_cons,
                req_prod: self.req_prod_pushed,
            };
            tracing::warn!(error = %e, "closing ring");
            self.error = Some(e.clone());
            return Err(e);
        }
        self.rsp_prod_seen = rsp_prod;
        Ok(pending)
    }
}

impl<Req, Rsp, M: Borrow<Region>> FrontRing<Req, Rsp, M> {
    /// Gives the shared memory back.
    pub fn into_inner(self) -> M {
        self.shared.into_inner()
    }
}
