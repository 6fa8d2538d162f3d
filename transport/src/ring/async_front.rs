//! The async frontend: [`RingClient`] submits requests and hands each
//! response to the caller whose request carried its id.
//!
//! ```text
//!  callers (any task)               driver task (one per ring)
//!  ------------------               --------------------------
//!  acquire a slot permit            loop:
//!  lock: id, put, push, register      lock: take responses, final check
//!  unlock; notify iff Yes             unlock; return permits; wake callers
//!  await the response                 wait for an event (or shutdown)
//! ```
//!
//! Invariants: the semaphore holds one permit per free slot (a permit is
//! forgotten when its request is put and given back when its response is
//! taken, or, for the [`ResponseStream`], when the response is yielded), so
//! nothing queues beyond the ring; every outstanding request has an entry
//! in the `pending` map keyed by its id; the lock is never held across an
//! await nor while waking anyone; the first fatal error is stored, ends
//! every outstanding call, and is returned by every later call.

use std::collections::{HashMap, VecDeque};
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use futures::{Sink, Stream};
use tokio::sync::{oneshot, AcquireError, Notify, OwnedSemaphorePermit, Semaphore};

use super::driver::{
    arm_own, close_own, share_ring, AsyncRingError, PeerState, PeerWatch, RingEndpoint, RingMemory,
    Tagged, BACK_ATTACHED_BYTE, BACK_CLOSED_BYTE, BACK_LIVE_BYTE, FRONT_ATTACHED_BYTE,
    FRONT_CLOSED_BYTE, FRONT_LIVE_BYTE,
};
use super::{FrontRing, RingEntry, RingStats};
use crate::platform::{DomId, EventChannel, Platform};

type Res<T> = Result<T, AsyncRingError>;

enum Waiter<Rsp> {
    /// A [`RingClient::call`]; the receiver may have been dropped.
    Call(oneshot::Sender<Res<Rsp>>),
    /// A request sent through the [`RequestSink`]: the response goes to the
    /// [`ResponseStream`].
    Stream,
}

struct State<Req, Rsp> {
    ring: Option<FrontRing<Req, Rsp, RingMemory>>,
    channel: Option<Arc<dyn EventChannel>>,
    pending: HashMap<u64, Waiter<Rsp>>,
    responses: VecDeque<Rsp>,
    stream_waker: Option<Waker>,
    next_id: u64,
    error: Option<AsyncRingError>,
    stats: RingStats,
}

struct Inner<Req, Rsp> {
    peer: DomId,
    state: Mutex<State<Req, Rsp>>,
    slots: Arc<Semaphore>,
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
    inner: Arc<Inner<Req, Rsp>>,
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

fn lock<Req, Rsp>(inner: &Inner<Req, Rsp>) -> MutexGuard<'_, State<Req, Rsp>> {
    // A panic while holding the lock leaves consistent data (every update
    // is a single step), so a poisoned lock is used as is.
    inner.state.lock().unwrap_or_else(|p| p.into_inner())
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
        mem = ring.into_inner();
        arm_own(&mut mem, FRONT_LIVE_BYTE, FRONT_ATTACHED_BYTE, port, peer)?;
        let ring = FrontRing::attach(mem, 0)?;
        let size = ring.size() as usize;
        let channel: Arc<dyn EventChannel> = Arc::from(channel);
        let inner = Arc::new(Inner {
            peer,
            state: Mutex::new(State {
                ring: Some(ring),
                channel: Some(channel.clone()),
                pending: HashMap::with_capacity(size),
                responses: VecDeque::with_capacity(size),
                stream_waker: None,
                next_id: 0,
                error: None,
                stats: RingStats::default(),
            }),
            slots: Arc::new(Semaphore::new(size)),
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
    /// take the request back: the backend still answers it, and the driver
    /// discards the answer and frees the slot.
    pub async fn call(&self, mut req: Req) -> Res<Rsp> {
        let permit = self.acquire().await?;
        let (tx, rx) = oneshot::channel();
        let channel = {
            let mut st = lock(&self.inner);
            put(self.inner.peer, &mut st, &mut req, Waiter::Call(tx))?
        };
        permit.forget();
        self.kick(channel)?;
        match rx.await {
            Ok(r) => r,
            // The driver went away without answering: the ring closed.
            Err(_) => Err(self.error()),
        }
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
    /// backend produced them.
    pub fn split(&self) -> (RequestSink<Req, Rsp>, ResponseStream<Req, Rsp>) {
        (
            RequestSink {
                client: self.clone(),
                acquiring: None,
                permit: None,
                unpushed: false,
            },
            ResponseStream {
                client: self.clone(),
                ended: false,
            },
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

    fn error(&self) -> AsyncRingError {
        lock(&self.inner)
            .error
            .clone()
            .unwrap_or(AsyncRingError::Closed {
                peer: self.inner.peer,
            })
    }

    /// Pushes what was put; notifies (outside the lock) when the ring says
    /// so.
    fn push(&self) -> Res<()> {
        let channel = {
            let mut st = lock(&self.inner);
            let ring = st.ring.as_mut().ok_or(AsyncRingError::Closed {
                peer: self.inner.peer,
            })?;
            match ring.push_requests() {
                Ok(n) if n.needed() => st.channel.clone(),
                Ok(_) => None,
                Err(e) => return Err(fail(&self.inner, st, e.into())),
            }
        };
        self.kick(channel)
    }

    fn kick(&self, channel: Option<Arc<dyn EventChannel>>) -> Res<()> {
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

/// Under the lock: gives `req` a fresh id, puts it, registers `waiter`, and
/// (for calls) pushes; returns the channel to notify if the push says so.
fn put<Req: RingEntry + Tagged, Rsp: RingEntry>(
    peer: DomId,
    st: &mut State<Req, Rsp>,
    req: &mut Req,
    waiter: Waiter<Rsp>,
) -> Res<Option<Arc<dyn EventChannel>>> {
    if let Some(e) = &st.error {
        return Err(e.clone());
    }
    let push = matches!(waiter, Waiter::Call(_));
    let id = loop {
        let id = st.next_id & Req::ID_MASK;
        st.next_id = st.next_id.wrapping_add(1);
        if !st.pending.contains_key(&id) {
            break id;
        }
    };
    req.set_id(id);
    let Some(ring) = st.ring.as_mut() else {
        return Err(AsyncRingError::Closed { peer });
    };
    ring.put_request(req)?;
    st.pending.insert(id, waiter);
    if push && st.ring.as_mut().expect("checked").push_requests()?.needed() {
        return Ok(st.channel.clone());
    }
    Ok(None)
}

/// Stores `e` as the ring's error (unless one is there), ends every
/// outstanding call with it (after dropping the lock), and stops the
/// driver. Returns the stored error.
fn fail<Req, Rsp>(
    inner: &Inner<Req, Rsp>,
    mut st: MutexGuard<'_, State<Req, Rsp>>,
    e: AsyncRingError,
) -> AsyncRingError {
    let e = st.error.get_or_insert(e).clone();
    let pending = std::mem::take(&mut st.pending);
    let waker = st.stream_waker.take();
    drop(st);
    inner.slots.close();
    inner.shutdown.notify_one();
    for (_, w) in pending {
        if let Waiter::Call(tx) = w {
            let _ = tx.send(Err(e.clone()));
        }
    }
    if let Some(w) = waker {
        w.wake();
    }
    e
}

/// The driver: takes responses when the backend signals, hands them out,
/// and sleeps on the event channel after a final check.
async fn drive<Req, Rsp>(inner: Arc<Inner<Req, Rsp>>, channel: Arc<dyn EventChannel>)
where
    Req: RingEntry + Tagged,
    Rsp: RingEntry + Tagged,
{
    let mut watch = PeerWatch::new(BACK_LIVE_BYTE, BACK_CLOSED_BYTE, BACK_ATTACHED_BYTE);
    let mut done: Vec<(oneshot::Sender<Res<Rsp>>, Rsp)> = Vec::new();
    let peer = inner.peer;
    loop {
        let (freed, waker, outcome) = harvest(&inner, &mut watch, &mut done);
        // Answers taken before an error still reach their callers.
        wake_all(&inner, &mut done, freed, waker);
        match outcome {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                fail(&inner, lock(&inner), e);
                break;
            }
        }
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

/// Under the lock: takes every response (final check included), sorts
/// them to their callers or the stream, and reads the backend's liveness
/// byte. Returns the permits to give back, the stream's waker if it has
/// new responses, and whether to go on (false: the ring was already
/// closed).
#[allow(clippy::type_complexity)]
fn harvest<Req, Rsp>(
    inner: &Inner<Req, Rsp>,
    watch: &mut PeerWatch,
    done: &mut Vec<(oneshot::Sender<Res<Rsp>>, Rsp)>,
) -> (usize, Option<Waker>, Res<bool>)
where
    Req: RingEntry + Tagged,
    Rsp: RingEntry + Tagged,
{
    let mut guard = lock(inner);
    let st = &mut *guard;
    if st.error.is_some() {
        return (0, None, Ok(false));
    }
    let (mut freed, mut to_stream) = (0usize, false);
    let Some(ring) = st.ring.as_mut() else {
        return (0, None, Ok(false));
    };
    let peer = inner.peer;
    let outcome: Res<PeerState> = (|| loop {
        while let Some(rsp) = ring.take_response()? {
            match st.pending.remove(&rsp.id()) {
                Some(Waiter::Call(tx)) => {
                    freed += 1;
                    done.push((tx, rsp));
                }
                Some(Waiter::Stream) => {
                    to_stream = true;
                    st.responses.push_back(rsp);
                }
                None => return Err(AsyncRingError::UnknownId { peer, id: rsp.id() }),
            }
        }
        if !ring.final_check_for_responses()? {
            return Ok(watch.check(ring.region()));
        }
    })();
    let waker = if to_stream {
        st.stream_waker.take()
    } else {
        None
    };
    let outcome = match outcome {
        Ok(PeerState::Running) => Ok(true),
        Ok(PeerState::Closed) => Err(AsyncRingError::PeerClosed { peer }),
        Ok(PeerState::Gone) => Err(AsyncRingError::PeerGone { peer }),
        Err(e) => Err(e),
    };
    (freed, waker, outcome)
}

fn wake_all<Req, Rsp>(
    inner: &Inner<Req, Rsp>,
    done: &mut Vec<(oneshot::Sender<Res<Rsp>>, Rsp)>,
    freed: usize,
    waker: Option<Waker>,
) {
    if freed > 0 {
        inner.slots.add_permits(freed);
    }
    for (tx, rsp) in done.drain(..) {
        let _ = tx.send(Ok(rsp));
    }
    if let Some(w) = waker {
        w.wake();
    }
}

type Acquire = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// The sending half of [`RingClient::split`]: a `Sink` of requests. A
/// request takes a slot at `poll_ready` (waiting while the ring is full,
/// after pushing what is unpushed) and is put on the ring at `start_send`;
/// `poll_flush` pushes and notifies.
pub struct RequestSink<Req: RingEntry + Tagged, Rsp: RingEntry + Tagged> {
    client: RingClient<Req, Rsp>,
    acquiring: Option<Acquire>,
    permit: Option<OwnedSemaphorePermit>,
    unpushed: bool,
}

impl<Req, Rsp> Sink<Req> for RequestSink<Req, Rsp>
where
    Req: RingEntry + Tagged + Send + Unpin + 'static,
    Rsp: RingEntry + Tagged + Send + Unpin + 'static,
{
    type Error = AsyncRingError;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Res<()>> {
        let this = &mut *self;
        if this.permit.is_some() {
            return Poll::Ready(Ok(()));
        }
        if this.acquiring.is_none() {
            if let Ok(p) = this.client.inner.slots.clone().try_acquire_owned() {
                this.permit = Some(p);
                return Poll::Ready(Ok(()));
            }
            // Full: publish what we hold back before waiting for slots.
            if this.unpushed {
                this.unpushed = false;
                this.client.push()?;
            }
            this.acquiring = Some(Box::pin(this.client.inner.slots.clone().acquire_owned()));
        }
        let acq = this.acquiring.as_mut().expect("set above");
        match acq.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(r) => {
                this.acquiring = None;
                match r {
                    Ok(p) => {
                        this.permit = Some(p);
                        Poll::Ready(Ok(()))
                    }
                    Err(_) => Poll::Ready(Err(this.client.error())),
                }
            }
        }
    }

    fn start_send(mut self: Pin<&mut Self>, mut req: Req) -> Res<()> {
        let permit = self.permit.take().expect("start_send without poll_ready");
        {
            let mut st = lock(&self.client.inner);
            put(self.client.inner.peer, &mut st, &mut req, Waiter::Stream)?;
        }
        permit.forget();
        self.unpushed = true;
        Ok(())
    }

    fn poll_flush(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Res<()>> {
        if self.unpushed {
            self.unpushed = false;
            self.client.push()?;
        }
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Res<()>> {
        self.poll_flush(cx)
    }
}

/// The receiving half of [`RingClient::split`]: responses to the requests
/// sent through the [`RequestSink`], in the order the backend produced
/// them. Ends with the error that closed the ring, then `None`.
pub struct ResponseStream<Req: RingEntry + Tagged, Rsp: RingEntry + Tagged> {
    client: RingClient<Req, Rsp>,
    ended: bool,
}

impl<Req, Rsp> Stream for ResponseStream<Req, Rsp>
where
    Req: RingEntry + Tagged + Send + Unpin + 'static,
    Rsp: RingEntry + Tagged + Send + Unpin + 'static,
{
    type Item = Res<Rsp>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Res<Rsp>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        let inner = &this.client.inner;
        let mut st = lock(inner);
        if let Some(rsp) = st.responses.pop_front() {
            drop(st);
            // The slot is free once the response is out of our hands.
            inner.slots.add_permits(1);
            return Poll::Ready(Some(Ok(rsp)));
        }
        if let Some(e) = &st.error {
            // Yield the error once, then end.
            let e = e.clone();
            drop(st);
            this.ended = true;
            return Poll::Ready(Some(Err(e)));
        }
        st.stream_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl<Req: RingEntry + Tagged, Rsp: RingEntry + Tagged> std::fmt::Debug for RequestSink<Req, Rsp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestSink")
            .field("peer", &self.client.inner.peer)
            .field("unpushed", &self.unpushed)
            .finish_non_exhaustive()
    }
}

impl<Req: RingEntry + Tagged, Rsp: RingEntry + Tagged> std::fmt::Debug
    for ResponseStream<Req, Rsp>
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseStream")
            .field("peer", &self.client.inner.peer)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}
