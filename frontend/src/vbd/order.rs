//! The order of writes that touch the same sectors: [`SectorLocks`].
//!
//! An unaligned write is a read-modify-write of the sectors it touches
//! (read them, patch the bytes, write them back). Were an aligned write of
//! one of those sectors acknowledged between the read and the write-back,
//! the write-back would undo it. So a read-modify-write holds its sectors
//! exclusively, from before its read until its write-back is answered;
//! aligned writes and trims hold theirs shared (they may overlap each
//! other, as NBD allows concurrent writes to, but not a read-modify-write).
//!
//! Requests are served in arrival order among those that conflict: a
//! request waits for every earlier one whose sectors overlap its own and
//! of which either is exclusive, whether that one runs or waits itself.
//! So a stream of aligned writes cannot starve a read-modify-write, and a
//! later request never overtakes an earlier one it conflicts with.
//! Requests that do not conflict run at once.

use std::sync::Mutex;

use tokio::sync::Notify;

/// Sector ranges held by writes in flight (see the module docs).
#[derive(Debug, Default)]
pub struct SectorLocks {
    state: Mutex<State>,
    /// Signalled whenever a hold ends.
    released: Notify,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    /// Holds and waiters, in arrival order.
    entries: Vec<Entry>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    id: u64,
    first: u64,
    end: u64,
    exclusive: bool,
}

impl Entry {
    fn conflicts(&self, other: &Entry) -> bool {
        (self.exclusive || other.exclusive) && self.first < other.end && other.first < self.end
    }
}

/// Sectors held until dropped.
#[derive(Debug)]
pub struct SectorGuard<'a> {
    locks: &'a SectorLocks,
    id: u64,
}

impl Drop for SectorGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.locks.lock_state();
        st.entries.retain(|e| e.id != self.id);
        drop(st);
        self.locks.released.notify_waiters();
    }
}

impl SectorLocks {
    /// No sector held.
    pub fn new() -> SectorLocks {
        SectorLocks::default()
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds sectors `first..end`, exclusively or shared, once every
    /// earlier conflicting request has ended.
    ///
    /// Cancellation safe: dropping the future (waiting or not) gives up
    /// its place.
    pub async fn lock(&self, first: u64, end: u64, exclusive: bool) -> SectorGuard<'_> {
        let guard = {
            let mut st = self.lock_state();
            let id = st.next_id;
            st.next_id += 1;
            st.entries.push(Entry {
                id,
                first,
                end,
                exclusive,
            });
            SectorGuard { locks: self, id }
        };
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            // Registered before the check, so a release after it wakes us.
            released.as_mut().enable();
            if self.may_run(guard.id) {
                return guard;
            }
            released.await;
        }
    }

    fn may_run(&self, id: u64) -> bool {
        let st = self.lock_state();
        let Some(at) = st.entries.iter().position(|e| e.id == id) else {
            return true;
        };
        let me = st.entries[at];
        !st.entries[..at].iter().any(|e| e.conflicts(&me))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[tokio::test]
    async fn overlapping_exclusive_and_shared_holds_wait_in_arrival_order() {
        let l = SectorLocks::new();
        let a = l.lock(0, 2, false).await; // aligned write of sectors 0-1
        let b = l.lock(1, 3, false).await; // overlaps, both shared: runs
        let _c = l.lock(5, 6, true).await; // disjoint exclusive: runs
        let mut d = Box::pin(l.lock(0, 1, true)); // read-modify-write of 0
        assert!(d.as_mut().now_or_never().is_none(), "waits for a");
        // A shared hold arriving after the waiting exclusive one waits too.
        let mut e = Box::pin(l.lock(0, 1, false));
        assert!(e.as_mut().now_or_never().is_none(), "waits behind d");
        // Unrelated sectors are not held up by the waiters.
        drop(l.lock(9, 10, true).now_or_never().expect("no conflict"));
        drop(b);
        assert!(d.as_mut().now_or_never().is_none(), "a still holds 0");
        drop(a);
        let d = d.await;
        assert!(e.as_mut().now_or_never().is_none(), "d holds 0 now");
        drop(d);
        let _e = e.await;
    }

    #[tokio::test]
    async fn a_dropped_waiter_gives_up_its_place() {
        let l = SectorLocks::new();
        let a = l.lock(0, 1, true).await;
        let mut b = Box::pin(l.lock(0, 1, true));
        assert!(b.as_mut().now_or_never().is_none());
        let mut c = Box::pin(l.lock(0, 1, false));
        assert!(c.as_mut().now_or_never().is_none());
        drop(b);
        drop(a);
        let _c = c.await;
        assert!(l.lock_state().entries.len() == 1);
    }
}
