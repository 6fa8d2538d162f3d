//! The async frontend: [`RingClient`] submits requests and hands each
//! response to the caller whose request carried its id.
//!
//! ```text
//!  callers (any task)                  driver task (one per ring)
//!  ------------------                  --------------------------
//!  acquire slot permit(s)              loop:
//!  lock: ids, put all, push once         wait for an event (or shutdown)
//!  unlock; notify iff Yes                lock: take responses, sort them,
//!  poll: lock, take responses, sort        check the peer's live byte,
//!    mine? done                            re-arm if someone sleeps
//!    dry: budget left? yield, look again   unlock; wake the woken
//!         else arm rsp_event, sleep
//! ```
//!
//! Whoever waits takes responses off the ring itself (a caller, the
//! [`ResponseStream`]), so a response reaches its caller without a hop
//! through the driver task while the caller is polling; the driver only
//! turns the backend's events into wakeups for those that sleep.
//!
//! Invariants: the semaphore holds one permit per free slot (a permit is
//! forgotten when its request is put and given back when its caller
//! collects the response, when a dropped call's response is discarded, or,
//! for the [`ResponseStream`], when the response is yielded), so nothing
//! queues beyond the ring; every outstanding request has an entry in the
//! [`Waiters`] table, allocated once with one entry per slot (no allocation
//! or hashing per request); `rsp_event` is set only by an end about to
//! sleep (a polling end leaves it, so the backend sends no event); the
//! driver re-arms after taking responses only while some task sleeps; the
//! lock is never held across an await nor while waking anyone; the first
//! fatal error is stored, ends every outstanding call, and is returned by
//! every later call.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use tokio::sync::{AcquireError, Notify, OwnedSemaphorePermit, Semaphore};

use super::driver::{
    arm_own, close_own, share_ring, AsyncRingError, PeerState, PeerWatch, RingEndpoint, RingMemory,
    Tagged, BACK_ATTACHED_BYTE, BACK_CLOSED_BYTE, BACK_LIVE_BYTE, FRONT_ATTACHED_BYTE,
    FRONT_CLOSED_BYTE, FRONT_LIVE_BYTE,
};
use super::waiters::{Kind, Outcome, Ticket, Waiters};
use super::wake_list::WakeList;
use super::{FrontRing, RingEntry, RingStats};
use crate::platform::{DomId, EventChannel, Platform};
use crate::polling::{PollBudget, PollStats, Polling, Round};

pub use super::client_split::{RequestSink, ResponseStream};

pub(super) type Res<T> = Result<T, AsyncRingError>;

/// The channel to notify after a push, when the push said so.
pub(super) type Kick = Option<Arc<dyn EventChannel>>;

pub(super) struct State<Req, Rsp> {
    pub(super) ring: Option<FrontRing<Req, Rsp, RingMemory>>,
    channel: Option<Arc<dyn EventChannel>>,
    pub(super) waiters: Waiters<Rsp>,
    /// Responses for the [`ResponseStream`], at most one per slot permit.
    pub(super) responses: VecDeque<Rsp>,
    pub(super) stream_waker: Option<Waker>,
    pub(super) error: Option<AsyncRingError>,
    stats: RingStats,
    pub(super) budget: PollBudget,
}

pub(super) struct Inner<Req, Rsp> {
    pub(super) peer: DomId,
    /// Slots in the ring.
    pub(super) size: u32,
    state: Mutex<State<Req, Rsp>>,
    pub(super) slots: Arc<Semaphore>,
    shutdown: Notify,
}

/// Closes the ring when the last user handle goes.
struct Guard<Req: RingEntry + Tagged, Rsp: RingEntry + Tagged>(Arc<Inner<Req, Rsp>>);

impl<Req: RingEntry + Tagged, Rsp: RingEntry + Tagged> Drop for Guard<Req, Rsp> {
    fn drop(&mut self) {
        self.0.shutdown.notify_one();
    }
}

/// The frontend of an async request/response ring. Cheap to clone; the
/// ring closes when the last clone (and every [`RequestSink`] and
/// [`ResponseStream`] made from it) is dropped, or at [`RingClient::close`].
pub struct RingClient<Req: RingEntry + Tagged, Rsp: RingEntry + Tagged> {
    pub(super) inner: Arc<Inner<Req, Rsp>>,
    guard: Arc<Guard<Req, Rsp>>,
    driver: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl<Req: RingEntry + Tagged, Rsp: RingEntry + Tagged> Clone for RingClient<Req, Rsp> {
    fn clone(&self) -> Self {
        RingClient {
            inner: self.inner.clone(),
            guard: self.guard.clone(),
            driver: self.driver.clone(),
        }
    }
}

impl<Req: RingEntry + Tagged, Rsp: RingEntry + Tagged> std::fmt::Debug for RingClient<Req, Rsp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingClient")
            .field("peer", &self.inner.peer)
            .finish_non_exhaustive()
    }
}

pub(super) fn lock<Req, Rsp>(inner: &Inner<Req, Rsp>) -> MutexGuard<'_, State<Req, Rsp>> {
    // A panic while holding the lock leaves consistent data (every update
    // is a single step), so a poisoned lock is used as is.
    inner.state.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a waiting task does after looking at the ring.
pub(super) enum Dry {
    /// Poll: yield to the runtime (giving the core up first when asked)
    /// and look again.
    Poll(Round),
    /// The event is armed and nothing came: sleep until woken.
    Sleep,
    /// Responses came in the final check: look again now.
    More,
}

impl<Req, Rsp> RingClient<Req, Rsp>
where
    Req: RingEntry + Tagged + Send + 'static,
    Rsp: RingEntry + Tagged + Send + 'static,
{
    /// Shares `pages` pages with the backend domain `peer`, initialises the
    /// ring in them, allocates the event channel, and starts the driver.
    /// Returns the handle and what to publish for the backend. Must be
    /// called inside a tokio runtime.
    pub fn share(p: &dyn Platform, peer: DomId, pages: usize) -> Res<(Self, RingEndpoint)> {
        let (mem, channel, endpoint) = share_ring(p, peer, pages)?;
        Ok((Self::new(mem, channel, peer)?, endpoint))
    }

    /// Initialises a ring in `mem` (whose pages the backend will map),
    /// marks this end live, and starts the driver on `channel`. Must be
    /// called inside a tokio runtime.
    pub fn new(mut mem: RingMemory, channel: Box<dyn EventChannel>, peer: DomId) -> Res<Self> {
        let port = channel.local_port();
        // Zeroes the header (padding included) first: a liveness byte
        // written before would be lost.
        let ring = FrontRing::<Req, Rsp, RingMemory>::init(mem)?;
        let size = ring.size();
        let waiters = Waiters::new(size, Req::ID_MASK).ok_or(AsyncRingError::IdSpace {
            slots: size,
            id_mask: Req::ID_MASK,
        })?;
        mem = ring.into_inner();
        arm_own(&mut mem, FRONT_LIVE_BYTE, FRONT_ATTACHED_BYTE, port, peer)?;
        let ring = FrontRing::attach(mem, 0)?;
        let channel: Arc<dyn EventChannel> = Arc::from(channel);
        let inner = Arc::new(Inner {
            peer,
            size,
            state: Mutex::new(State {
                ring: Some(ring),
                channel: Some(channel.clone()),
                waiters,
                responses: VecDeque::with_capacity(size as usize),
                stream_waker: None,
                error: None,
                stats: RingStats::default(),
                budget: PollBudget::default(),
            }),
            slots: Arc::new(Semaphore::new(size as usize)),
            shutdown: Notify::new(),
        });
        let span = tracing::debug_span!("ring front", peer, port);
        let task = tokio::spawn(tracing::Instrument::instrument(
            drive(inner.clone(), channel),
            span,
        ));
        Ok(RingClient {
            guard: Arc::new(Guard(inner.clone())),
            inner,
            driver: Arc::new(Mutex::new(Some(task))),
        })
    }

    /// Sends `req` (its id is overwritten with a fresh one) and waits for
    /// the response with the same id. Waits for a free slot first when the
    /// ring is full (back-pressure).
    ///
    /// Cancellation safety: dropping the future before it got a slot sends
    /// nothing. Dropping it after the request went onto the ring does not
    /// take the request back: the backend still answers it, and the answer
    /// is discarded and its slot freed.
    pub async fn call(&self, mut req: Req) -> Res<Rsp> {
        let permit = self.acquire().await?;
        let (ticket, channel) = {
            let mut st = lock(&self.inner);
            let t = put_all(
                self.inner.peer,
                &mut st,
                std::slice::from_mut(&mut req),
                Kind::Call,
            )?;
            (t.0.expect("one request put"), t.1)
        };
        permit.forget();
        let wait = CallWait {
            client: self,
            ticket,
            finished: false,
        };
        self.kick(channel)?;
        wait.await
    }

    /// Sets how this end waits for responses (adaptive polling by default;
    /// [`Polling::Off`] sleeps on the event channel at once).
    pub fn set_polling(&self, polling: Polling) {
        lock(&self.inner).budget.set_policy(polling);
    }

    /// Counters of this end's polling.
    pub fn poll_stats(&self) -> PollStats {
        lock(&self.inner).budget.stats()
    }

    /// Counters of the ring (requests produced, responses consumed,
    /// notifications sent and suppressed), as of the last operation.
    pub fn stats(&self) -> RingStats {
        let st = lock(&self.inner);
        st.ring.as_ref().map_or(st.stats, |r| r.stats())
    }

    /// The error that closed the ring, if any.
    pub fn closed_by(&self) -> Option<AsyncRingError> {
        lock(&self.inner).error.clone()
    }

    /// Splits into a [`RequestSink`] and a [`ResponseStream`]: requests fed
    /// into the sink are pushed in batches (on flush, or when the ring is
    /// full), and their responses come out of the stream in the order the
    /// backend produced them. Both also have batch methods
    /// ([`RequestSink::send_batch`], [`ResponseStream::recv_batch`]) that
    /// take one lock per batch.
    pub fn split(&self) -> (RequestSink<Req, Rsp>, ResponseStream<Req, Rsp>) {
        (
            RequestSink::new(self.clone(), self.inner.size as usize),
            ResponseStream::new(self.clone()),
        )
    }

    /// Closes the ring: every outstanding call ends with
    /// [`AsyncRingError::Closed`], the peer is told (liveness byte), and the
    /// pages and port are released once the driver has stopped, which this
    /// waits for.
    ///
    /// Cancellation safety: the close is started at the first poll; dropping
    /// the future only stops waiting for the driver.
    pub async fn close(self) {
        self.inner.shutdown.notify_one();
        let task = self.driver.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = task {
            let _ = t.await;
        }
    }

    async fn acquire(&self) -> Res<OwnedSemaphorePermit> {
        match self.inner.slots.clone().acquire_owned().await {
            Ok(p) => Ok(p),
            Err(AcquireError { .. }) => Err(self.error()),
        }
    }
}

impl<Req: RingEntry + Tagged, Rsp: RingEntry + Tagged> RingClient<Req, Rsp> {
    pub(super) fn error(&self) -> AsyncRingError {
        lock(&self.inner)
            .error
            .clone()
            .unwrap_or(AsyncRingError::Closed {
                peer: self.inner.peer,
            })
    }

    /// Notifies the backend (outside the lock) when a push said so.
    pub(super) fn kick(&self, channel: Kick) -> Res<()> {
        if let Some(ch) = channel {
            if let Err(e) = ch.notify() {
                let e = AsyncRingError::platform(self.inner.peer, "notify the backend", e);
                let st = lock(&self.inner);
                return Err(fail(&self.inner, st, e));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
impl<Req: RingEntry + Tagged, Rsp: RingEntry + Tagged> RingClient<Req, Rsp> {
    /// Runs `f` on the ring's memory while it is open.
    pub(super) fn with_region<T>(&self, f: impl FnOnce(&crate::shm::Region) -> T) -> Option<T> {
        lock(&self.inner).ring.as_ref().map(|r| f(r.region()))
    }
}

/// Under the lock: gives each request a fresh id, puts them all, registers
/// them as `kind`, and pushes once. Returns the first request's ticket and
/// the channel to notify if the push says so. The caller holds one slot
/// permit per request.
pub(super) fn put_all<Req: RingEntry + Tagged, Rsp: RingEntry>(
    peer: DomId,
    st: &mut State<Req, Rsp>,
    reqs: &mut [Req],
    kind: Kind,
) -> Res<(Option<Ticket>, Kick)> {
    if let Some(e) = &st.error {
        return Err(e.clone());
    }
    let Some(ring) = st.ring.as_mut() else {
        return Err(AsyncRingError::Closed { peer });
    };
    let mut first = None;
    let mut r = Ok(());
    for req in reqs.iter_mut() {
        let Some(t) = st.waiters.alloc(kind) else {
            // Unreachable while every caller holds a permit per request.
            r = Err(AsyncRingError::Closed { peer });
            break;
        };
        req.set_id(t.id);
        if let Err(e) = ring.put_request(req) {
            st.waiters.unalloc(t);
            r = Err(e.into());
            break;
        }
        first.get_or_insert(t);
    }
    // Push what was put even if one put was refused.
    let notify = ring.push_requests()?;
    r?;
    Ok((first, notify.needed().then(|| st.channel.clone()).flatten()))
}

impl<Req: RingEntry + Tagged, Rsp: RingEntry + Tagged> Inner<Req, Rsp> {
    /// Under the lock: takes responses off the ring until it is empty or
    /// `wl` is full, sorting each to its caller (whose waker goes into
    /// `wl`), to the stream, or away (a dropped call's). Returns the
    /// responses taken and the slot permits to give back.
    pub(super) fn harvest(
        &self,
        st: &mut State<Req, Rsp>,
        wl: &mut WakeList,
    ) -> Res<(usize, usize)> {
        let (mut taken, mut freed) = (0, 0);
        let Some(ring) = st.ring.as_mut() else {
            return Err(AsyncRingError::Closed { peer: self.peer });
        };
        while !wl.is_full() {
            let Some(rsp) = ring.take_response()? else {
                break;
            };
            taken += 1;
            match st.waiters.on_response(rsp.id(), rsp) {
                Outcome::Kept(w) => {
                    if let Some(w) = w {
                        wl.push(w);
                    }
                }
                Outcome::Stream(rsp) => {
                    st.responses.push_back(rsp);
                    if let Some(w) = st.stream_waker.take() {
                        wl.push(w);
                    }
                }
                Outcome::Discarded => freed += 1,
                Outcome::Unknown(id) => {
                    return Err(AsyncRingError::UnknownId {
                        peer: self.peer,
                        id,
                    })
                }
            }
        }
        if taken > 0 && st.budget.is_dry() {
            st.budget.found_work(Instant::now());
        }
        Ok((taken, freed))
    }

    /// Under the lock, after a harvest found nothing for the caller: poll
    /// once more while the budget lasts, else ask for an event (final
    /// check). The caller registers its waker on [`Dry::Sleep`].
    pub(super) fn dry(&self, st: &mut State<Req, Rsp>) -> Res<Dry> {
        if let Some(round) = st.budget.round(Instant::now()) {
            return Ok(Dry::Poll(round));
        }
        let ring = st
            .ring
            .as_mut()
            .ok_or(AsyncRingError::Closed { peer: self.peer })?;
        Ok(if ring.final_check_for_responses()? {
            Dry::More
        } else {
            Dry::Sleep
        })
    }

    /// Outside the lock: wakes what a harvest collected and gives back the
    /// permits of discarded responses.
    pub(super) fn settle(&self, wl: &mut WakeList, freed: usize) {
        wl.wake_all();
        if freed > 0 {
            self.slots.add_permits(freed);
        }
    }
}

/// Outside the lock, after [`Dry::Poll`]: give the core up when asked, and
/// have the task polled again after the runtime's other tasks.
pub(super) fn yield_round(round: Round, cx: &mut Context<'_>) {
    if round == Round::YieldCore {
        std::thread::yield_now();
    }
    cx.waker().wake_by_ref();
}

/// The wait of one [`RingClient::call`] for its response.
struct CallWait<'a, Req: RingEntry + Tagged, Rsp: RingEntry + Tagged> {
    client: &'a RingClient<Req, Rsp>,
    ticket: Ticket,
    finished: bool,
}

impl<Req: RingEntry + Tagged, Rsp: RingEntry + Tagged> Future for CallWait<'_, Req, Rsp> {
    type Output = Res<Rsp>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Res<Rsp>> {
        let this = self.get_mut();
        let inner = &this.client.inner;
        let mut wl = WakeList::new();
        let mut freed = 0;
        let mut st = lock(inner);
        let step: Result<Poll<Rsp>, AsyncRingError> = loop {
            if let Some(rsp) = st.waiters.poll_call(this.ticket, None) {
                // Our slot is free again.
                freed += 1;
                break Ok(Poll::Ready(rsp));
            }
            if let Some(e) = &st.error {
                break Err(e.clone());
            }
            match inner.harvest(&mut st, &mut wl) {
                Err(e) => break Err(e),
                Ok((taken, f)) => {
                    freed += f;
                    if taken > 0 {
                        if wl.is_full() {
                            drop(st);
                            inner.settle(&mut wl, std::mem::take(&mut freed));
                            st = lock(inner);
                        }
                        continue;
                    }
                }
            }
            match inner.dry(&mut st) {
                Err(e) => break Err(e),
                Ok(Dry::More) => continue,
                Ok(Dry::Sleep) => {
                    st.waiters.poll_call(this.ticket, Some(cx.waker()));
                    break Ok(Poll::Pending);
                }
                Ok(Dry::Poll(round)) => {
                    drop(st);
                    inner.settle(&mut wl, freed);
                    yield_round(round, cx);
                    return Poll::Pending;
                }
            }
        };
        match step {
            Ok(Poll::Pending) => {
                drop(st);
                inner.settle(&mut wl, freed);
                Poll::Pending
            }
            Ok(Poll::Ready(rsp)) => {
                drop(st);
                inner.settle(&mut wl, freed);
                this.finished = true;
                Poll::Ready(Ok(rsp))
            }
            Err(e) => {
                let e = if st.error.is_none() {
                    fail(inner, st, e)
                } else {
                    drop(st);
                    e
                };
                inner.settle(&mut wl, freed);
                this.finished = true;
                Poll::Ready(Err(e))
            }
        }
    }
}

impl<Req: RingEntry + Tagged, Rsp: RingEntry + Tagged> Drop for CallWait<'_, Req, Rsp> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let inner = &self.client.inner;
        let give_back = lock(inner).waiters.abandon(self.ticket);
        if give_back {
            inner.slots.add_permits(1);
        }
    }
}

/// Stores `e` as the ring's error (unless one is there), wakes every
/// sleeping caller and the stream (after dropping the lock: they find the
/// error), and stops the driver. Returns the stored error.
pub(super) fn fail<Req, Rsp>(
    inner: &Inner<Req, Rsp>,
    mut st: MutexGuard<'_, State<Req, Rsp>>,
    e: AsyncRingError,
) -> AsyncRingError {
    let e = st.error.get_or_insert(e).clone();
    let wakers = st.waiters.take_wakers();
    let waker = st.stream_waker.take();
    drop(st);
    inner.slots.close();
    inner.shutdown.notify_one();
    for w in wakers.into_iter().chain(waker) {
        w.wake();
    }
    e
}

/// The driver: when the backend signals, takes responses and wakes their
/// sleeping callers, watches the backend's liveness byte, and re-arms the
/// event while anyone sleeps.
async fn drive<Req, Rsp>(inner: Arc<Inner<Req, Rsp>>, channel: Arc<dyn EventChannel>)
where
    Req: RingEntry + Tagged,
    Rsp: RingEntry + Tagged,
{
    let mut watch = PeerWatch::new(BACK_LIVE_BYTE, BACK_CLOSED_BYTE, BACK_ATTACHED_BYTE);
    let peer = inner.peer;
    loop {
        tokio::select! {
            r = poll_fn(|cx| channel.poll_event(cx)) => {
                if let Err(e) = r {
                    let e = AsyncRingError::platform(peer, "wait for the backend's event", e);
                    fail(&inner, lock(&inner), e);
                    break;
                }
            }
            _ = inner.shutdown.notified() => {
                fail(&inner, lock(&inner), AsyncRingError::Closed { peer });
                break;
            }
        }
        if !on_event(&inner, &mut watch) {
            break;
        }
    }
    // Release the pages and the port; tell the peer we are gone.
    let mut st = lock(&inner);
    let ring = st.ring.take();
    let ch = st.channel.take();
    if let Some(r) = &ring {
        st.stats = r.stats();
    }
    drop(st);
    if let (Some(ring), Some(ch)) = (ring, ch) {
        close_own(ring.into_inner(), FRONT_CLOSED_BYTE, &*ch);
    }
    drop(channel);
}

/// One event: harvest, check the peer, re-arm while someone sleeps. False
/// when the ring is closed (now or before).
fn on_event<Req, Rsp>(inner: &Inner<Req, Rsp>, watch: &mut PeerWatch) -> bool
where
    Req: RingEntry + Tagged,
    Rsp: RingEntry + Tagged,
{
    let mut wl = WakeList::new();
    let mut freed = 0;
    let mut st = lock(inner);
    let peer = inner.peer;
    let outcome: Res<()> = loop {
        if st.error.is_some() {
            drop(st);
            inner.settle(&mut wl, freed);
            return false;
        }
        match inner.harvest(&mut st, &mut wl) {
            Err(e) => break Err(e),
            Ok((taken, f)) => {
                freed += f;
                if taken > 0 && wl.is_full() {
                    drop(st);
                    inner.settle(&mut wl, std::mem::take(&mut freed));
                    st = lock(inner);
                    continue;
                }
            }
        }
        let ring = st.ring.as_mut().expect("open while no error");
        match watch.check(ring.region()) {
            PeerState::Running => {}
            PeerState::Closed => break Err(AsyncRingError::PeerClosed { peer }),
            PeerState::Gone => break Err(AsyncRingError::PeerGone { peer }),
        }
        let sleepers = st.waiters.sleeping() > 0 || st.stream_waker.is_some();
        if !sleepers {
            break Ok(());
        }
        match st.ring.as_mut().expect("open").final_check_for_responses() {
            Ok(true) => continue,
            Ok(false) => break Ok(()),
            Err(e) => break Err(e.into()),
        }
    };
    match outcome {
        Ok(()) => {
            drop(st);
            inner.settle(&mut wl, freed);
            true
        }
        Err(e) => {
            // Answers taken before the error still reach their callers.
            fail(inner, st, e);
            inner.settle(&mut wl, freed);
            false
        }
    }
}
