//! The async backend: [`RingServer`] is a `Stream` of requests; responses
//! go back with [`RingServer::respond`] (or a [`Responder`] in another
//! task).
//!
//! ```text
//!  stream consumer                  driver task (one per ring)
//!  ---------------                  --------------------------
//!  poll_next: lock, take request    loop:
//!    none: final check; none:         wait for an event (or shutdown)
//!    store waker, Pending             lock: check the peer's live byte,
//!  respond: lock, put, push,            take the waker; unlock; wake
//!    unlock; notify iff Yes
//! ```
//!
//! Nothing queues here: requests stay in the ring until the consumer takes
//! them, and the frontend cannot put more than the ring holds. The lock is
//! never held across an await nor while waking.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use futures::Stream;
use tokio::sync::Notify;

use super::driver::{
    arm_own, close_own, map_ring, AsyncRingError, PeerState, PeerWatch, RingEndpoint, RingMemory,
    BACK_ATTACHED_BYTE, BACK_CLOSED_BYTE, BACK_LIVE_BYTE, FRONT_ATTACHED_BYTE, FRONT_CLOSED_BYTE,
    FRONT_LIVE_BYTE,
};
use super::{BackRing, RingEntry, RingStats};
use crate::platform::{DomId, EventChannel, Platform};

type Res<T> = Result<T, AsyncRingError>;

struct State<Req, Rsp> {
    ring: Option<BackRing<Req, Rsp, RingMemory>>,
    channel: Option<Arc<dyn EventChannel>>,
    waker: Option<Waker>,
    peer: PeerState,
    error: Option<AsyncRingError>,
    stats: RingStats,
}

struct Inner<Req, Rsp> {
    peer: DomId,
    state: Mutex<State<Req, Rsp>>,
    shutdown: Notify,
}

fn lock<Req, Rsp>(inner: &Inner<Req, Rsp>) -> MutexGuard<'_, State<Req, Rsp>> {
    // Every update under the lock is a single step: a poisoned lock still
    // holds consistent data.
    inner.state.lock().unwrap_or_else(|p| p.into_inner())
}

/// The backend of an async request/response ring: a `Stream` of requests
/// (ending with the error that closed the ring, or `None` when the
/// frontend closed in order and every request was taken). Dropping it (and
/// every [`Responder`]) closes the ring; so does [`RingServer::close`].
pub struct RingServer<Req: RingEntry, Rsp: RingEntry> {
    responder: Responder<Req, Rsp>,
    driver: Option<tokio::task::JoinHandle<()>>,
    ended: bool,
}

/// Sends responses for a [`RingServer`], from any task. Cheap to clone.
pub struct Responder<Req: RingEntry, Rsp: RingEntry> {
    inner: Arc<Inner<Req, Rsp>>,
    _guard: Arc<Guard<Req, Rsp>>,
}

impl<Req: RingEntry, Rsp: RingEntry> Clone for Responder<Req, Rsp> {
    fn clone(&self) -> Self {
        Responder {
            inner: self.inner.clone(),
            _guard: self._guard.clone(),
        }
    }
}

struct Guard<Req, Rsp>(Arc<Inner<Req, Rsp>>);

impl<Req, Rsp> Drop for Guard<Req, Rsp> {
    fn drop(&mut self) {
        self.0.shutdown.notify_one();
    }
}

impl<Req: RingEntry, Rsp: RingEntry> std::fmt::Debug for RingServer<Req, Rsp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingServer")
            .field("peer", &self.responder.inner.peer)
            .finish_non_exhaustive()
    }
}

impl<Req: RingEntry, Rsp: RingEntry> std::fmt::Debug for Responder<Req, Rsp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("peer", &self.inner.peer)
            .finish_non_exhaustive()
    }
}

impl<Req, Rsp> RingServer<Req, Rsp>
where
    Req: RingEntry + Send + 'static,
    Rsp: RingEntry + Send + 'static,
{
    /// Maps the frontend's ring and binds to its port (what it published),
    /// and starts the driver. Must be called inside a tokio runtime.
    pub fn connect(p: &dyn Platform, front: &RingEndpoint) -> Res<Self> {
        let (mem, channel) = map_ring(p, front)?;
        Self::new(mem, channel, front.domid)
    }

    /// Attaches to the ring the frontend initialised in `mem`, marks this
    /// end live, and starts the driver on `channel`. Must be called inside
    /// a tokio runtime.
    pub fn new(mut mem: RingMemory, channel: Box<dyn EventChannel>, peer: DomId) -> Res<Self> {
        arm_own(
            &mut mem,
            BACK_LIVE_BYTE,
            BACK_ATTACHED_BYTE,
            channel.local_port(),
            peer,
        )?;
        let ring = BackRing::<Req, Rsp, RingMemory>::new(mem)?;
        let port = channel.local_port();
        let channel: Arc<dyn EventChannel> = Arc::from(channel);
        let inner = Arc::new(Inner {
            peer,
            state: Mutex::new(State {
                ring: Some(ring),
                channel: Some(channel.clone()),
                waker: None,
                peer: PeerState::Running,
                error: None,
                stats: RingStats::default(),
            }),
            shutdown: Notify::new(),
        });
        let span = tracing::debug_span!("ring back", peer, port);
        let task = tokio::spawn(tracing::Instrument::instrument(
            drive(inner.clone(), channel),
            span,
        ));
        Ok(RingServer {
            responder: Responder {
                _guard: Arc::new(Guard(inner.clone())),
                inner,
            },
            driver: Some(task),
            ended: false,
        })
    }

    /// A handle to respond from another task.
    pub fn responder(&self) -> Responder<Req, Rsp> {
        self.responder.clone()
    }

    /// Puts `rsp` in the slot of the oldest unanswered request, pushes it,
    /// and notifies the frontend if it asked. Never waits: a taken request
    /// always has a slot for its response.
    pub fn respond(&self, rsp: &Rsp) -> Res<()> {
        self.responder.respond(rsp)
    }

    /// See [`Responder::respond_all`].
    pub fn respond_all<'a>(&self, rsps: impl IntoIterator<Item = &'a Rsp>) -> Res<()>
    where
        Rsp: 'a,
    {
        self.responder.respond_all(rsps)
    }

    /// Counters of the ring.
    pub fn stats(&self) -> RingStats {
        self.responder.stats()
    }

    /// Closes the ring (the frontend sees the liveness byte say "closed"),
    /// releases the mapping and the port, and waits for the driver to stop.
    ///
    /// Cancellation safety: the close is started at the first poll; dropping
    /// the future only stops waiting for the driver.
    pub async fn close(mut self) {
        self.responder.inner.shutdown.notify_one();
        if let Some(t) = self.driver.take() {
            let _ = t.await;
        }
    }
}

impl<Req: RingEntry, Rsp: RingEntry> Responder<Req, Rsp> {
    /// See [`RingServer::respond`].
    pub fn respond(&self, rsp: &Rsp) -> Res<()> {
        self.respond_all(std::iter::once(rsp))
    }

    /// Puts several responses and pushes them once (one notification at
    /// most).
    pub fn respond_all<'a>(&self, rsps: impl IntoIterator<Item = &'a Rsp>) -> Res<()>
    where
        Rsp: 'a,
    {
        let channel = {
            let mut st = lock(&self.inner);
            if let Some(e) = &st.error {
                return Err(e.clone());
            }
            let peer = self.inner.peer;
            let ring = st.ring.as_mut().ok_or(AsyncRingError::Closed { peer })?;
            let mut r = Ok(());
            for rsp in rsps {
                r = ring.put_response(rsp);
                if r.is_err() {
                    break;
                }
            }
            // Push what was put even if one put was refused.
            let notify = ring.push_responses();
            r?;
            match notify {
                Ok(n) if n.needed() => st.channel.clone(),
                Ok(_) => None,
                Err(e) => return Err(fail(&self.inner, st, e.into())),
            }
        };
        if let Some(ch) = channel {
            if let Err(e) = ch.notify() {
                let e = AsyncRingError::platform(self.inner.peer, "notify the frontend", e);
                return Err(fail(&self.inner, lock(&self.inner), e));
            }
        }
        Ok(())
    }

    /// Counters of the ring.
    pub fn stats(&self) -> RingStats {
        let st = lock(&self.inner);
        st.ring.as_ref().map_or(st.stats, |r| r.stats())
    }
}

fn fail<Req, Rsp>(
    inner: &Inner<Req, Rsp>,
    mut st: MutexGuard<'_, State<Req, Rsp>>,
    e: AsyncRingError,
) -> AsyncRingError {
    let e = st.error.get_or_insert(e).clone();
    let waker = st.waker.take();
    drop(st);
    inner.shutdown.notify_one();
    if let Some(w) = waker {
        w.wake();
    }
    e
}

impl<Req: RingEntry + Unpin, Rsp: RingEntry> Stream for RingServer<Req, Rsp> {
    type Item = Res<Req>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Res<Req>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        let inner = &this.responder.inner;
        let mut st = lock(inner);
        let peer = inner.peer;
        let fields = &mut *st;
        let r: Res<Option<Req>> = match (&fields.error, fields.ring.as_mut()) {
            (Some(e), _) => Err(e.clone()),
            (None, None) => Err(AsyncRingError::Closed { peer }),
            (None, Some(ring)) => (|| loop {
                if let Some(req) = ring.take_request()? {
                    return Ok(Some(req));
                }
                if !ring.final_check_for_requests()? {
                    return Ok(None);
                }
            })(),
        };
        match r {
            Ok(Some(req)) => Poll::Ready(Some(Ok(req))),
            Ok(None) => match st.peer {
                PeerState::Running => {
                    st.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
                PeerState::Closed => {
                    this.ended = true;
                    Poll::Ready(None)
                }
                PeerState::Gone => {
                    let e = fail(inner, st, AsyncRingError::PeerGone { peer });
                    this.ended = true;
                    Poll::Ready(Some(Err(e)))
                }
            },
            Err(e) => {
                let e = fail(inner, st, e);
                this.ended = true;
                Poll::Ready(Some(Err(e)))
            }
        }
    }
}

/// The driver: turns the frontend's events into wakeups of the stream and
/// watches the frontend's liveness byte.
async fn drive<Req, Rsp>(inner: Arc<Inner<Req, Rsp>>, channel: Arc<dyn EventChannel>)
where
    Req: RingEntry,
    Rsp: RingEntry,
{
    let mut watch = PeerWatch::new(FRONT_LIVE_BYTE, FRONT_CLOSED_BYTE, FRONT_ATTACHED_BYTE);
    let peer = inner.peer;
    loop {
        let waker = {
            let mut st = lock(&inner);
            if st.error.is_some() {
                break;
            }
            let ring = st.ring.as_ref().expect("open while no error");
            st.peer = watch.check(ring.region());
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        tokio::select! {
            r = poll_fn(|cx| channel.poll_event(cx)) => {
                if let Err(e) = r {
                    fail(&inner, lock(&inner), AsyncRingError::platform(peer, "wait for the frontend's event", e));
                    break;
                }
            }
            _ = inner.shutdown.notified() => {
                fail(&inner, lock(&inner), AsyncRingError::Closed { peer });
                break;
            }
        }
    }
    let mut st = lock(&inner);
    let ring = st.ring.take();
    let ch = st.channel.take();
    if let Some(r) = &ring {
        st.stats = r.stats();
    }
    drop(st);
    if let (Some(ring), Some(ch)) = (ring, ch) {
        close_own(ring.into_inner(), BACK_CLOSED_BYTE, &*ch);
    }
    drop(channel);
}
