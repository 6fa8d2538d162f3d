//! The bound on the data a device holds for requests in flight.
//!
//! Every read or write request holds a buffer of its data (up to 1 MiB for
//! an indirect request) from the moment it is served until it is
//! answered. The rings allow up to 4 queues x 512 requests, so without a
//! bound one frontend could make this daemon hold about 2 GiB per disk.
//! Before a request is served, the queue takes its upper bound of data
//! bytes ([`super::request::data_bytes`]) from the device's budget of
//! [`MAX_INFLIGHT_BYTES`], waiting (and so reading no more requests from
//! that queue's ring: the frontend waits for answers) until enough
//! requests have been answered. The bytes actually held are counted too
//! ([`Inflight::hold`]), with their high-water mark, so the bound can be
//! checked from outside.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Data bytes one device may hold for its requests in flight (all queues
/// together): 16 MiB, 16 of the largest requests.
pub const MAX_INFLIGHT_BYTES: usize = 16 << 20;

/// A device's budget, and the bytes its requests hold.
#[derive(Debug)]
pub struct Inflight {
    budget: Arc<Semaphore>,
    limit: usize,
    held: AtomicU64,
    peak: Arc<AtomicU64>,
}

/// The budget a request took; given back when dropped.
#[derive(Debug)]
pub struct Reserved(#[allow(dead_code)] Option<OwnedSemaphorePermit>);

/// Bytes a request holds; counted off when dropped.
#[derive(Debug)]
pub struct Held<'a> {
    inflight: &'a Inflight,
    bytes: u64,
}

impl Inflight {
    /// A budget of `limit` bytes, whose high-water mark of bytes held goes
    /// to `peak` (which may be shared by several devices' counters: it
    /// keeps the largest).
    pub fn new(limit: usize, peak: Arc<AtomicU64>) -> Inflight {
        Inflight {
            budget: Arc::new(Semaphore::new(limit)),
            limit,
            held: AtomicU64::new(0),
            peak,
        }
    }

    /// Takes `bytes` (at most the whole budget) from the budget, waiting
    /// for answered requests to give theirs back.
    ///
    /// Cancellation safe: dropping the future takes nothing.
    pub async fn reserve(&self, bytes: usize) -> Reserved {
        let n = bytes.min(self.limit);
        if n == 0 {
            return Reserved(None);
        }
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        // The semaphore is never closed.
        Reserved(self.budget.clone().acquire_many_owned(n).await.ok())
    }

    /// Counts `bytes` of data held until the returned guard drops.
    pub fn hold(&self, bytes: usize) -> Held<'_> {
        let bytes = bytes as u64;
        let now = self.held.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(now, Ordering::Relaxed);
        Held {
            inflight: self,
            bytes,
        }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.inflight.held.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_budget_waits_for_a_reservation_to_come_back() {
        let peak = Arc::new(AtomicU64::new(0));
        let f = Inflight::new(3 << 20, peak.clone());
        let a = f.reserve(1 << 20).await;
        let b = f.reserve(2 << 20).await;
        let mut third = Box::pin(f.reserve(1 << 20));
        assert!(
            futures::poll!(third.as_mut()).is_pending(),
            "the budget is spent"
        );
        drop(a);
        let _c = third.await;
        drop(b);
        // More than the budget is clamped to it, not refused forever.
        drop(_c);
        let _big = f.reserve(64 << 20).await;
        let _zero = f.reserve(0).await;
    }

    #[test]
    fn held_bytes_keep_their_high_water_mark() {
        let peak = Arc::new(AtomicU64::new(0));
        let f = Inflight::new(16 << 20, peak.clone());
        let a = f.hold(100);
        let b = f.hold(50);
        drop(a);
        let _c = f.hold(20);
        drop(b);
        assert_eq!(peak.load(Ordering::Relaxed), 150);
    }
}
