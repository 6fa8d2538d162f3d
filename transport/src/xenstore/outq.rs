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
//!   by making the *writers* wait (see [`super::server`]), so [`OutQueue::len`]
//!   is compared with [`super::server::QUEUE_CAPACITY`] there;
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
    /// Payloads of the non-special watch events in `msgs`.
    events: HashSet<Vec<u8>>,
    closed: bool,
}

/// What [`OutQueue::push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pushed {
    /// Queued; the queue now holds this many messages.
    Queued(usize),
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
        st.msgs.push_back(msg);
        let n = st.msgs.len();
        drop(st);
        self.ready.notify_one();
        Pushed::Queued(n)
    }

    /// Messages queued now.
    pub fn len(&self) -> usize {
        self.lock().msgs.len()
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
                        bytes += 16 + m.payload.len();
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

    /// Waits until fewer than `capacity` messages are queued or the queue
    /// is closed.
    ///
    /// Cancellation safe.
    pub async fn room(&self, capacity: usize) {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            // Registered before the check, so a wake-up in between is kept.
            drained.as_mut().enable();
            {
                let st = self.lock();
                if st.closed || st.msgs.len() < capacity {
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
        assert_eq!(q.push(ev("/a")), Pushed::Queued(1));
        assert_eq!(q.push(ev("/a")), Pushed::Coalesced);
        assert_eq!(q.push(ev("/b")), Pushed::Queued(2));
        assert_eq!(q.push(ev("@releaseDomain")), Pushed::Queued(3));
        assert_eq!(q.push(ev("@releaseDomain")), Pushed::Queued(4));
        let got = q.take(usize::MAX).await.unwrap();
        assert_eq!(got.len(), 4);
        // Taken: the same event is queued again.
        assert_eq!(q.push(ev("/a")), Pushed::Queued(1));
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
            tokio::spawn(async move { q.room(2).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        let n = q.take(1).await.unwrap().len();
        q.wrote(n);
        waiter.await.unwrap();
        assert_eq!(q.sent(), 1);
    }
}
