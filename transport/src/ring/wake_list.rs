//! [`WakeList`]: wakers collected under a lock and woken after it is
//! dropped, without a heap allocation (a fixed array of
//! [`WakeList::CAPACITY`]; a collector that fills it drops the lock, wakes,
//! and goes on).

use std::task::Waker;

/// Up to [`WakeList::CAPACITY`] wakers, kept inline.
#[derive(Debug, Default)]
pub(super) struct WakeList {
    wakers: [Option<Waker>; WakeList::CAPACITY],
    len: usize,
}

impl WakeList {
    /// Wakers held at most (small: the list is built and dropped on every
    /// poll of a waiting task, and its drop glue visits every slot).
    pub(super) const CAPACITY: usize = 8;

    pub(super) fn new() -> WakeList {
        WakeList::default()
    }

    /// Whether another push would be refused.
    pub(super) fn is_full(&self) -> bool {
        self.len == Self::CAPACITY
    }

    /// Keeps `w`; the caller checks [`WakeList::is_full`] first (a push into
    /// a full list wakes `w` at once rather than losing it).
    pub(super) fn push(&mut self, w: Waker) {
        if self.is_full() {
            w.wake();
            return;
        }
        self.wakers[self.len] = Some(w);
        self.len += 1;
    }

    /// Wakes and forgets every waker held. Call with no lock held.
    pub(super) fn wake_all(&mut self) {
        for slot in &mut self.wakers[..self.len] {
            if let Some(w) = slot.take() {
                w.wake();
            }
        }
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn holds_up_to_capacity_and_wakes_each_once() {
        let c = Arc::new(Count(AtomicUsize::new(0)));
        let mut l = WakeList::new();
        for _ in 0..WakeList::CAPACITY {
            assert!(!l.is_full());
            l.push(Waker::from(c.clone()));
        }
        assert!(l.is_full());
        // A push into a full list wakes at once.
        l.push(Waker::from(c.clone()));
        assert_eq!(c.0.load(Ordering::SeqCst), 1);
        l.wake_all();
        assert_eq!(c.0.load(Ordering::SeqCst), WakeList::CAPACITY + 1);
        l.wake_all();
        assert_eq!(c.0.load(Ordering::SeqCst), WakeList::CAPACITY + 1);
        assert!(!l.is_full());
    }
}
