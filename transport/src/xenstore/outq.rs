//! The embedded xenstored's outgoing queue of one connection: replies and
//! watch events waiting for the connection's writer task.
//!
//! Invariants:
//! * messages leave in the order they were queued;
//! * a watch event identical (same path and token) to one still queued is
//!   not queued again (C xenstored does the same; special `@` events are
//!   always queued), so a node written again and again while its watcher is
//!   busy costs the watcher one queued event, not one per write;
//! * the queue itself never refuses a message: the server keeps it bounded
//!   by making the *writers* wait (see [`super::server`]), so its length
//!   and bytes are compared with [`super::server::QUEUE_CAPACITY`] and
//!   [`super::server::QUEUE_BYTES`] there;
//! * once closed, pushes are dropped and every waiter is woken.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;

use super::XsMsg;
use crate::abi::xs_wire::XsType;

#[derive(Debug, Default)]
struct State {
    msgs: VecDeque<XsMsg>,
    /// Bytes of `msgs` on the wire (headers and payloads).
    bytes: usize,
    /// Payloads of the non-special watch events in `msgs`.
    events: HashSet<Vec<u8>>,
    closed: bool,
}

/// What [`OutQueue::push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pushed {
    /// Queued; the queue now holds this many messages, of this many
    /// bytes.
    Queued(usize, usize),
    /// An identical event was queued already.
    Coalesced,
    /// The connection is closed.
    Closed,
}

/// One connection's outgoing queue.
#[derive(Debug, Default)]
pub(super) struct OutQueue {
    state: Mutex<State>,
    /// Wakes the writer task: something was queued, or the queue closed.
    ready: Notify,
    /// Wakes writers of other connections waiting for room.
    drained: Notify,
    /// Messages written to the socket so far (progress, for stall checks).
    sent: AtomicU64,
}

/// Bytes `m` takes on the wire.
fn wire_len(m: &XsMsg) -> usize {
    16 + m.payload.len()
}

fn is_special_event(m: &XsMsg) -> bool {
    m.ty == XsType::WatchEvent.raw() && m.payload.first() == Some(&b'@')
}

impl OutQueue {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `msg` (coalescing a repeated watch event).
    pub fn push(&self, msg: XsMsg) -> Pushed {
        let mut st = self.lock();
        if st.closed {
            return Pushed::Closed;
        }
        if msg.ty == XsType::WatchEvent.raw()
            && !is_special_event(&msg)
            && !st.events.insert(msg.payload.clone())
        {
            return Pushed::Coalesced;
        }
        st.bytes += wire_len(&msg);
        st.msgs.push_back(msg);
        let (n, bytes) = (st.msgs.len(), st.bytes);
        drop(st);
        self.ready.notify_one();
        Pushed::Queued(n, bytes)
    }

    /// Whether more than `msgs` messages or `bytes` bytes are queued.
    pub fn over(&self, msgs: usize, bytes: usize) -> bool {
        let st = self.lock();
        st.msgs.len() > msgs || st.bytes > bytes
    }

    /// Messages written so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Closes the queue: later pushes are dropped, the writer ends once
    /// what is queued is taken, waiters wake.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
        self.drained.notify_waiters();
    }

    /// Whether the queue is closed (the connection's reader has ended, or
    /// the connection is being closed).
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Takes queued messages (at least one, up to about `max_bytes` of
    /// them) for the writer; `None` once the queue is closed and empty.
    pub async fn take(&self, max_bytes: usize) -> Option<Vec<XsMsg>> {
        loop {
            let ready = self.ready.notified();
            {
                let mut st = self.lock();
                if !st.msgs.is_empty() {
                    let mut out = Vec::new();
                    let mut bytes = 0;
                    while let Some(m) = st.msgs.pop_front() {
                        if m.ty == XsType::WatchEvent.raw() && !is_special_event(&m) {
                            st.events.remove(&m.payload);
                        }
                        bytes += wire_len(&m);
                        st.bytes -= wire_len(&m);
                        out.push(m);
                        if bytes >= max_bytes {
                            break;
                        }
                    }
                    return Some(out);
                }
                if st.closed {
                    return None;
                }
            }
            ready.await;
        }
    }

    /// The writer wrote `n` messages: wake the writers waiting for room.
    pub fn wrote(&self, n: usize) {
        self.sent.fetch_add(n as u64, Ordering::Relaxed);
        self.drained.notify_waiters();
    }

    /// Waits until fewer than `capacity` messages and fewer than
    /// `max_bytes` bytes are queued, or the queue is closed.
    ///
    /// Cancellation safe.
    pub async fn room(&self, capacity: usize, max_bytes: usize) {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            // Registered before the check, so a wake-up in between is kept.
            drained.as_mut().enable();
            {
                let st = self.lock();
                if st.closed || (st.msgs.len() < capacity && st.bytes < max_bytes) {
                    return;
                }
            }
            drained.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(path: &str) -> XsMsg {
        crate::xenstore::Event {
            conn: crate::xenstore::ConnId(1),
            path: path.into(),
            token: b"t".to_vec(),
        }
        .to_msg()
    }

    #[tokio::test]
    async fn repeated_events_coalesce_until_taken_and_special_ones_never_do() {
        let q = OutQueue::default();
        assert!(matches!(q.push(ev("/a")), Pushed::Queued(1, _)));
        assert_eq!(q.push(ev("/a")), Pushed::Coalesced);
        assert!(matches!(q.push(ev("/b")), Pushed::Queued(2, _)));
        assert!(matches!(q.push(ev("@releaseDomain")), Pushed::Queued(3, _)));
        assert!(matches!(q.push(ev("@releaseDomain")), Pushed::Queued(4, _)));
        let got = q.take(usize::MAX).await.unwrap();
        assert_eq!(got.len(), 4);
        // Taken: the same event is queued again.
        let one = 16 + ev("/a").payload.len();
        assert_eq!(q.push(ev("/a")), Pushed::Queued(1, one));
        q.close();
        assert_eq!(q.push(ev("/c")), Pushed::Closed);
        assert_eq!(q.take(usize::MAX).await.unwrap().len(), 1);
        assert!(q.take(usize::MAX).await.is_none());
    }

    #[tokio::test]
    async fn room_waits_for_the_writer() {
        let q = std::sync::Arc::new(OutQueue::default());
        q.push(ev("/a"));
        q.push(ev("/b"));
        let waiter = {
            let q = q.clone();
            tokio::spawn(async move { q.room(2, usize::MAX).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        let n = q.take(1).await.unwrap().len();
        q.wrote(n);
        waiter.await.unwrap();
        assert_eq!(q.sent(), 1);
    }

    #[tokio::test]
    async fn room_counts_bytes_too() {
        let q = OutQueue::default();
        let one = 16 + ev("/a").payload.len();
        q.push(ev("/a"));
        q.push(ev("/b"));
        assert!(q.over(1, usize::MAX) && q.over(usize::MAX, 2 * one - 1));
        assert!(!q.over(2, 2 * one));
        let room = q.room(usize::MAX, 2 * one);
        tokio::pin!(room);
        assert!(futures::poll!(room.as_mut()).is_pending());
        let n = q.take(1).await.unwrap().len();
        q.wrote(n);
        room.await;
    }
}
