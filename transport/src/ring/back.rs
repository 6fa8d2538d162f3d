//! The backend half of a ring: consumes requests, produces responses.

use std::borrow::Borrow;
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{fence, Ordering};

use super::shared::{publish, Shared};
use super::{NotifyNeeded, RingEntry, RingError, RingStats};
use crate::shm::Region;

/// The backend of a request/response ring (ring.h's `BACK_RING_*` and
/// `struct NAME_back_ring`): private `rsp_prod_pvt` and `req_cons` over the
/// shared page(s) in `M` (a [`Region`], `&Region`, `Arc<Region>`, ...).
///
/// Requests are taken with [`BackRing::take_request`] (each copied out of
/// its slot once); responses are written with [`BackRing::put_response`]
/// into the slots of consumed requests and published with
/// [`BackRing::push_responses`]. Before sleeping,
/// [`BackRing::final_check_for_requests`] asks for a notification and checks
/// once more. The backend never initialises the header.
pub struct BackRing<Req, Rsp, M: Borrow<Region> = Region> {
    shared: Shared<M>,
    /// Responses written into slots (published or not).
    rsp_prod_pvt: u32,
    /// Responses published in `rsp_prod` (the "old" of the notify rule).
    rsp_prod_pushed: u32,
    /// Requests taken.
    req_cons: u32,
    /// The last `req_prod` read and accepted.
    req_prod_seen: u32,
    /// Set when the peer broke the protocol: the ring is closed.
    error: Option<RingError>,
    /// Private copy of one slot.
    scratch: Box<[u8]>,
    stats: RingStats,
    _types: PhantomData<fn(&Rsp) -> Req>,
}

impl<Req, Rsp, M: Borrow<Region>> fmt::Debug for BackRing<Req, Rsp, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackRing")
            .field("shared", &self.shared)
            .field("rsp_prod_pvt", &self.rsp_prod_pvt)
            .field("rsp_prod_pushed", &self.rsp_prod_pushed)
            .field("req_cons", &self.req_cons)
            .field("req_prod_seen", &self.req_prod_seen)
            .field("error", &self.error)
            .field("stats", &self.stats)
            .finish()
    }
}

impl<Req: RingEntry, Rsp: RingEntry, M: Borrow<Region>> BackRing<Req, Rsp, M> {
    /// Attaches to a ring the frontend initialised (ring.h's
    /// `BACK_RING_INIT`): private indexes 0.
    pub fn new(mem: M) -> Result<Self, RingError> {
        Self::attach(mem, 0)
    }

    /// Attaches with both private indexes at `start` (ring.h's
    /// `BACK_RING_ATTACH`): nothing consumed is waiting for a response. The
    /// header is not touched.
    pub fn attach(mem: M, start: u32) -> Result<Self, RingError> {
        let shared = Shared::new::<Req, Rsp>(mem)?;
        let scratch = vec![0u8; shared.slot()].into_boxed_slice();
        Ok(BackRing {
            shared,
            rsp_prod_pvt: start,
            rsp_prod_pushed: start,
            req_cons: start,
            req_prod_seen: start,
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

    /// Requests taken and not yet answered: how many responses
    /// [`BackRing::put_response`] accepts now.
    pub fn owed_responses(&self) -> u32 {
        self.req_cons.wrapping_sub(self.rsp_prod_pvt)
    }

    /// Responses put but not yet pushed.
    pub fn unpushed(&self) -> u32 {
        self.rsp_prod_pvt.wrapping_sub(self.rsp_prod_pushed)
    }

    /// The private response producer (`rsp_prod_pvt`).
    pub fn rsp_prod_pvt(&self) -> u32 {
        self.rsp_prod_pvt
    }

    /// The private request consumer (`req_cons`).
    pub fn req_cons(&self) -> u32 {
        self.req_cons
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

    /// Requests the frontend has pushed and we have not taken
    /// (`RING_HAS_UNCONSUMED_REQUESTS`), after checking the frontend's
    /// `req_prod`.
    pub fn unconsumed_requests(&mut self) -> Result<u32, RingError> {
        self.check_open()?;
        self.refresh()
    }

    /// Takes the next request, copied out of its slot once, or `None` when
    /// the frontend has pushed no more.
    pub fn take_request(&mut self) -> Result<Option<Req>, RingError> {
        self.check_open()?;
        if self.req_cons == self.req_prod_seen && self.refresh()? == 0 {
            return Ok(None);
        }
        let req = self.shared.read_entry(self.req_cons, &mut self.scratch);
        self.req_cons = self.req_cons.wrapping_add(1);
        self.stats.consumed += 1;
        Ok(Some(req))
    }

    /// Writes `rsp` into the slot of the oldest unanswered request (not yet
    /// visible to the frontend: see [`BackRing::push_responses`]). Refused
    /// with [`RingError::NothingToAnswer`] when every request taken has its
    /// response: the slot would be one the frontend has not given us.
    pub fn put_response(&mut self, rsp: &Rsp) -> Result<(), RingError> {
        self.check_open()?;
        if self.owed_responses() == 0 {
            return Err(RingError::NothingToAnswer {
                req_cons: self.req_cons,
            });
        }
        self.shared
            .write_entry(self.rsp_prod_pvt, rsp, &mut self.scratch);
        self.rsp_prod_pvt = self.rsp_prod_pvt.wrapping_add(1);
        self.stats.produced += 1;
        Ok(())
    }

    /// Publishes the responses put since the last push and says whether the
    /// frontend must be notified (`RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`).
    pub fn push_responses(&mut self) -> Result<NotifyNeeded, RingError> {
        self.check_open()?;
        let old = self.rsp_prod_pushed;
        let new = self.rsp_prod_pvt;
        let notify = publish(
            self.shared.rsp_prod(),
            self.shared.rsp_event(),
            old,
            new,
            &mut self.stats,
        );
        self.rsp_prod_pushed = new;
        Ok(notify)
    }

    /// Before sleeping: if no request is pending, ask to be notified of the
    /// next one (`req_event = req_cons + 1`) and check again
    /// (`RING_FINAL_CHECK_FOR_REQUESTS`). True means requests are pending:
    /// take them instead of sleeping.
    pub fn final_check_for_requests(&mut self) -> Result<bool, RingError> {
        self.check_open()?;
        if self.refresh()? > 0 {
            return Ok(true);
        }
        // Relaxed: the fence below orders it before the second check.
        self.shared
            .req_event()
            .store(self.req_cons.wrapping_add(1), Ordering::Relaxed);
        // Full barrier between setting req_event and re-reading req_prod;
        // pairs with the frontend's fence in push_requests. Without it a
        // request pushed right now could be missed by our re-check while
        // the frontend reads our old req_event and does not notify: we
        // would sleep on a pending request.
        fence(Ordering::SeqCst);
        Ok(self.refresh()? > 0)
    }

    fn check_open(&self) -> Result<(), RingError> {
        match &self.error {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Reads the frontend's `req_prod` once, checks it, and returns the
    /// number of requests not yet taken. A `req_prod` more than the ring
    /// size ahead of the responses produced (ring.h's
    /// `RING_REQUEST_PROD_OVERFLOW`), or behind `req_cons`, closes the
    /// ring.
    fn refresh(&mut self) -> Result<u32, RingError> {
        // Acquire: pairs with the frontend's Release store in
        // push_requests, so the request slots up to req_prod are visible
        // before we copy them.
        let req_prod = self.shared.req_prod().load(Ordering::Acquire);
        let in_flight = req_prod.wrapping_sub(self.rsp_prod_pvt);
        let pending = req_prod.wrapping_sub(self.req_cons);
        if in_flight > self.size() || pending > in_flight {
            let e = RingError::RequestProducer {
                req_prod,
                req_cons: self.req_cons,
                rsp_prod_pvt: self.rsp_prod_pvt,
                size: self.size(),
            };
            tracing::warn!(error = %e, "closing ring");
            self.error = Some(e.clone());
            return Err(e);
        }
        self.req_prod_seen = req_prod;
        Ok(pending)
    }
}

impl<Req, Rsp, M: Borrow<Region>> BackRing<Req, Rsp, M> {
    /// Gives the shared memory back.
    pub fn into_inner(self) -> M {
        self.shared.into_inner()
    }
}
