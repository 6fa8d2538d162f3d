//! The two halves of [`RingClient::split`]: [`RequestSink`] (a `Sink` of
//! requests, and [`RequestSink::send_batch`]) and [`ResponseStream`] (a
//! `Stream` of responses, and [`ResponseStream::recv_batch`]).
//!
//! The sink holds fed requests in a buffer allocated once (one slot permit
//! each) and puts them on the ring under one lock at flush, with one push
//! and one notify decision; the batch methods take one lock (and one
//! semaphore operation) per batch. The stream takes responses off the ring
//! itself while it polls (see [`crate::polling`]).

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use futures::{Sink, Stream};
use tokio::sync::TryAcquireError;
use tokio_util::sync::PollSemaphore;

use super::async_front::{fail, lock, put_all, yield_round, Dry, Res, RingClient};
use super::waiters::Kind;
use super::wake_list::WakeList;
use super::{AsyncRingError, RingEntry, Tagged};

/// The sending half of [`RingClient::split`]: a `Sink` of requests. A
/// request takes a slot at `poll_ready` (waiting while the ring is full,
/// after publishing what is held back) and is kept at `start_send`;
/// `poll_flush` puts what is kept on the ring, pushes once and notifies if
/// the backend asked. Ids are overwritten with fresh ones. Requests fed and
/// not flushed when the sink is dropped are discarded (their slots are
/// given back).
pub struct RequestSink<Req: RingEntry + Tagged, Rsp: RingEntry + Tagged> {
    client: RingClient<Req, Rsp>,
    sem: PollSemaphore,
    /// A permit taken (and forgotten) for the next `start_send`.
    spare: bool,
    /// Requests fed and not yet on the ring, one permit each; never more
    /// than the ring's size (allocated once).
    buf: Vec<Req>,
}

impl<Req: RingEntry + Tagged, Rsp: RingEntry + Tagged> RequestSink<Req, Rsp> {
    pub(super) fn new(client: RingClient<Req, Rsp>, size: usize) -> Self {
        RequestSink {
            sem: PollSemaphore::new(client.inner.slots.clone()),
            client,
            spare: false,
            buf: Vec::with_capacity(size),
        }
    }

    /// Puts the held-back requests on the ring (one lock, one push) and
    /// notifies if the backend asked.
    fn publish(&mut self) -> Res<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let inner = &self.client.inner;
        let r = {
            let mut st = lock(inner);
            put_all(inner.peer, &mut st, &mut self.buf, Kind::Stream)
        };
        self.buf.clear();
        let (_, channel) = r?;
        self.client.kick(channel)
    }

    /// Sends a batch: waits for at least one free slot, then puts as many
    /// of `reqs` as there are free slots (their ids overwritten with fresh
    /// ones) under one lock, pushes once and notifies at most once. Returns
    /// how many were sent (at least 1 for a non-empty `reqs`): send the
    /// rest with another call. Requests fed earlier through the `Sink` go
    /// first.
    ///
    /// Cancellation safety: dropping the future while it waits for a slot
    /// sends nothing (a slot it was granted meanwhile is used by the next
    /// send).
    pub async fn send_batch(&mut self, reqs: &mut [Req]) -> Res<usize> {
        if reqs.is_empty() {
            return Ok(0);
        }
        self.publish()?;
        let mut n = usize::from(std::mem::take(&mut self.spare));
        if n == 0 {
            match poll_fn(|cx| self.sem.poll_acquire(cx)).await {
                Some(p) => p.forget(),
                None => return Err(self.client.error()),
            }
            n = 1;
        }
        let slots = &self.client.inner.slots;
        let more = slots.available_permits().min(reqs.len() - n);
        if more > 0 {
            if let Ok(p) = slots.try_acquire_many(more as u32) {
                p.forget();
                n += more;
            }
        }
        let inner = &self.client.inner;
        let (_, channel) = {
            let mut st = lock(inner);
            put_all(inner.peer, &mut st, &mut reqs[..n], Kind::Stream)?
        };
        self.client.kick(channel)?;
        Ok(n)
    }
}

impl<Req: RingEntry + Tagged, Rsp: RingEntry + Tagged> Drop for RequestSink<Req, Rsp> {
    /// Requests fed and never flushed are discarded; their slots (and a
    /// slot taken for a send that never came) are given back.
    fn drop(&mut self) {
        let held = self.buf.len() + usize::from(self.spare);
        if held > 0 {
            self.client.inner.slots.add_permits(held);
        }
    }
}

impl<Req, Rsp> Sink<Req> for RequestSink<Req, Rsp>
where
    Req: RingEntry + Tagged + Send + Unpin + 'static,
    Rsp: RingEntry + Tagged + Send + Unpin + 'static,
{
    type Error = AsyncRingError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Res<()>> {
        let this = self.get_mut();
        if this.spare {
            return Poll::Ready(Ok(()));
        }
        if this.buf.len() == this.buf.capacity() {
            this.publish()?;
        }
        match this.client.inner.slots.try_acquire() {
            Ok(p) => {
                p.forget();
                this.spare = true;
                return Poll::Ready(Ok(()));
            }
            Err(TryAcquireError::Closed) => return Poll::Ready(Err(this.client.error())),
            Err(TryAcquireError::NoPermits) => {}
        }
        // Full: publish what we hold back before waiting for slots.
        this.publish()?;
        match ready!(this.sem.poll_acquire(cx)) {
            Some(p) => {
                p.forget();
                this.spare = true;
                Poll::Ready(Ok(()))
            }
            None => Poll::Ready(Err(this.client.error())),
        }
    }

    fn start_send(self: Pin<&mut Self>, req: Req) -> Res<()> {
        let this = self.get_mut();
        assert!(
            std::mem::take(&mut this.spare),
            "start_send without poll_ready"
        );
        this.buf.push(req);
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Res<()>> {
        Poll::Ready(self.get_mut().publish())
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
    /// Responses moved out of the shared queue under one lock and not yet
    /// yielded (each still holds its slot permit); at most the ring's size,
    /// allocated once.
    local: VecDeque<Rsp>,
}

impl<Req: RingEntry + Tagged, Rsp: RingEntry + Tagged> ResponseStream<Req, Rsp> {
    pub(super) fn new(client: RingClient<Req, Rsp>) -> Self {
        let size = client.inner.size as usize;
        ResponseStream {
            client,
            ended: false,
            local: VecDeque::with_capacity(size),
        }
    }

    /// Yields up to `max` responses from the local queue, giving their
    /// slots back.
    fn yield_local(&mut self, max: usize, out: &mut dyn FnMut(Rsp)) -> usize {
        let k = max.min(self.local.len());
        for rsp in self.local.drain(..k) {
            out(rsp);
        }
        // Their slots are free once they are out of our hands.
        if k > 0 {
            self.client.inner.slots.add_permits(k);
        }
        k
    }

    /// Waits for responses and appends every one at hand, up to `max`, to
    /// `out` under one lock; returns how many. An error once when the ring
    /// failed, then `Ok(0)`.
    ///
    /// Cancellation safety: responses are moved only when the future
    /// returns, so dropping it loses none.
    pub async fn recv_batch(&mut self, out: &mut Vec<Rsp>, max: usize) -> Res<usize> {
        if max == 0 {
            return Ok(0);
        }
        poll_fn(|cx| self.poll_recv(cx, max, &mut |r| out.push(r)))
            .await
            .unwrap_or(Ok(0))
    }

    /// Moves up to `max` responses into `out`: Ready(Some(Ok(n))) with
    /// `n > 0`, Ready(Some(Err)) once when the ring failed, then
    /// Ready(None).
    fn poll_recv(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
        out: &mut dyn FnMut(Rsp),
    ) -> Poll<Option<Res<usize>>> {
        // Responses moved out earlier go first, without the lock.
        if !self.local.is_empty() {
            return Poll::Ready(Some(Ok(self.yield_local(max, out))));
        }
        if self.ended {
            return Poll::Ready(None);
        }
        let inner = &self.client.inner;
        let mut wl = WakeList::new();
        let mut freed = 0;
        let mut st = lock(inner);
        let step: Res<Poll<usize>> = loop {
            if !st.responses.is_empty() {
                // All of them, under this one lock.
                self.local.extend(st.responses.drain(..));
                break Ok(Poll::Ready(0));
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
            let dry = if st.waiters.outstanding() == 0 {
                // Nothing in flight: no polling, ask for the next event.
                match st.ring.as_mut().map(|r| r.final_check_for_responses()) {
                    Some(Ok(true)) => Ok(Dry::More),
                    Some(Ok(false)) => Ok(Dry::Sleep),
                    Some(Err(e)) => Err(e.into()),
                    None => Err(AsyncRingError::Closed { peer: inner.peer }),
                }
            } else {
                inner.dry(&mut st)
            };
            match dry {
                Err(e) => break Err(e),
                Ok(Dry::More) => continue,
                Ok(Dry::Sleep) => {
                    st.stream_waker = Some(cx.waker().clone());
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
            Ok(Poll::Ready(_)) => {
                drop(st);
                inner.settle(&mut wl, freed);
                Poll::Ready(Some(Ok(self.yield_local(max, out))))
            }
            Ok(Poll::Pending) => {
                drop(st);
                inner.settle(&mut wl, freed);
                Poll::Pending
            }
            Err(e) => {
                let e = if st.error.is_none() {
                    fail(inner, st, e)
                } else {
                    drop(st);
                    e
                };
                inner.settle(&mut wl, freed);
                self.ended = true;
                Poll::Ready(Some(Err(e)))
            }
        }
    }
}

impl<Req, Rsp> Stream for ResponseStream<Req, Rsp>
where
    Req: RingEntry + Tagged + Send + Unpin + 'static,
    Rsp: RingEntry + Tagged + Send + Unpin + 'static,
{
    type Item = Res<Rsp>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Res<Rsp>>> {
        let this = self.get_mut();
        let mut got = None;
        match ready!(this.poll_recv(cx, 1, &mut |r| got = Some(r))) {
            None => Poll::Ready(None),
            Some(Err(e)) => Poll::Ready(Some(Err(e))),
            Some(Ok(_)) => Poll::Ready(got.map(Ok)),
        }
    }
}

impl<Req: RingEntry + Tagged, Rsp: RingEntry + Tagged> std::fmt::Debug for RequestSink<Req, Rsp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestSink")
            .field("peer", &self.client.inner.peer)
            .field("held_back", &self.buf.len())
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
