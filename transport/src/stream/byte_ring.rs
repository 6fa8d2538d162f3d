//! The two halves of a byte ring: [`Producer`] writes one ring, [`Consumer`]
//! reads the other, both over memory shared with a possibly hostile peer.
//!
//! Each half keeps a private copy of the one index it owns (the producer's
//! `prod`, the consumer's `cons`) and stores it to shared memory after every
//! move; it reads the peer's index once per step, checks it, and uses only
//! that checked copy. See the module documentation of [`crate::stream`] for
//! the invariants and the notify protocol.

use std::fmt;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use super::control::{ControlPage, PeerState, RingId, Side};
use super::marker::{judge, MarkerSpot, MARKER_CLOSED};
use super::{NotifyNeeded, StreamError};
use crate::abi::vchan::{VCHAN_LIVE_CLOSED, VCHAN_NOTIFY_READ, VCHAN_NOTIFY_WRITE};
use crate::platform::{ForeignMapping, LocalPages, SharedPages};
use crate::shm::Region;

/// Anything that owns a mapped [`Region`]: a plain region, pages this domain
/// shares, or a mapping of the peer's grants. The stream keeps it (and so the
/// mapping) alive as long as either half lives.
pub trait MappedMemory: Send + Sync + fmt::Debug + 'static {
    /// The mapped memory.
    fn region(&self) -> &Region;
}

impl MappedMemory for Region {
    fn region(&self) -> &Region {
        self
    }
}

impl MappedMemory for Box<dyn SharedPages> {
    fn region(&self) -> &Region {
        self.memory()
    }
}

impl MappedMemory for Box<dyn ForeignMapping> {
    fn region(&self) -> &Region {
        self.memory()
    }
}

impl MappedMemory for Box<dyn LocalPages> {
    fn region(&self) -> &Region {
        self.memory()
    }
}

/// Counters of one half, for observability.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RingStats {
    /// Bytes moved through the ring by this half.
    pub bytes: u64,
    /// Steps after which the peer had asked for an event
    /// ([`NotifyNeeded::Yes`]).
    pub notifies_needed: u64,
    /// Steps that moved data when the peer had not asked (no event sent).
    pub notifies_suppressed: u64,
    /// Times this half found nothing to do and asked the peer for an event.
    pub wakeups_requested: u64,
}

/// What both halves of one end share: the memory, which side we are, and
/// the sticky fault that closes the channel.
pub(crate) struct Shared {
    side: Side,
    control: Box<dyn MappedMemory>,
    left: Option<Box<dyn MappedMemory>>,
    right: Option<Box<dyn MappedMemory>>,
    fault: OnceLock<StreamError>,
    /// Private (not shared memory): whether this end has closed.
    closed: AtomicBool,
    /// Where the clean-close markers are, if the layout has room.
    markers: Option<MarkerSpot>,
    /// Private: whether the peer's marker ever showed 1 or 2.
    peer_aware: AtomicBool,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("side", &self.side)
            .field("fault", &self.fault.get())
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// The caller has checked the control region with [`ControlPage::new`].
    pub(crate) fn new(
        side: Side,
        control: Box<dyn MappedMemory>,
        left: Option<Box<dyn MappedMemory>>,
        right: Option<Box<dyn MappedMemory>>,
        markers: Option<MarkerSpot>,
    ) -> Shared {
        Shared {
            side,
            control,
            left,
            right,
            fault: OnceLock::new(),
            closed: AtomicBool::new(false),
            markers,
            peer_aware: AtomicBool::new(false),
        }
    }

    pub(crate) fn markers(&self) -> Option<MarkerSpot> {
        self.markers
    }

    pub(crate) fn side(&self) -> Side {
        self.side
    }

    pub(crate) fn control(&self) -> ControlPage<'_> {
        ControlPage::new(self.control.region()).expect("control region checked at set-up")
    }

    /// The region holding `ring`'s bytes: its own pages, or the control page.
    fn data(&self, ring: RingId) -> &Region {
        let own = match ring {
            RingId::Left => &self.left,
            RingId::Right => &self.right,
        };
        own.as_ref().map_or(self.control.region(), |m| m.region())
    }

    /// The sticky fault, if the peer broke the protocol earlier.
    fn check(&self) -> Result<(), StreamError> {
        match self.fault.get() {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Records a protocol violation: the first one sticks, the channel is
    /// closed, and the (first) error is returned.
    fn fail(&self, e: StreamError) -> StreamError {
        let e = self
            .fault
            .get_or_init(|| {
                tracing::warn!(side = %self.side, error = %e, "vchan peer broke the protocol; closing");
                e
            })
            .clone();
        // Abortive: our marker stays 1, so the peer sees a death rather
        // than a complete stream.
        let _ = self.close(false);
        e
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Sets our live byte to 0, after our clean-close marker 2 when `clean`
    /// (an orderly close) and the layout has room for it. Yes the first
    /// time: the caller then sends an event so that the peer notices
    /// (libxenvchan does the same).
    pub(crate) fn close(&self, clean: bool) -> NotifyNeeded {
        // Relaxed: a private flag that only guards against closing twice.
        if self.closed.swap(true, Ordering::Relaxed) {
            return NotifyNeeded::No;
        }
        let ctrl = self.control();
        if let (true, Some(spot)) = (clean, self.markers) {
            // Release, before the live byte: a peer that sees the 2
            // (acquire) also sees our data and indexes, even if we die
            // before the 0 below and our unmap notification writes it.
            ctrl.marker(spot, self.side)
                .store(MARKER_CLOSED, Ordering::Release);
        }
        // Release: the data, indexes and marker we stored before closing
        // are seen by a peer that sees the 0 (its acquire load of our live
        // byte), so it can drain them, and take the 0 for a clean close,
        // before reporting end of stream.
        ctrl.live(self.side)
            .store(VCHAN_LIVE_CLOSED, Ordering::Release);
        NotifyNeeded::Yes
    }

    pub(crate) fn peer_state(&self) -> Result<PeerState, StreamError> {
        self.check()?;
        let ctrl = self.control();
        let peer = self.side.peer();
        // Acquire pairs with the peer's release when it closes: its last
        // data, index and marker are seen after its 0.
        let live = ctrl.live(peer).load(Ordering::Acquire);
        // Loaded after the live byte (Acquire keeps it after): a close's 0
        // seen above brings its marker 2 with it. Read the other way round,
        // a close between the two loads would show marker 1 and live 0, and
        // an orderly close would be taken for a death.
        let marker = self
            .markers
            .map(|spot| ctrl.marker(spot, peer).load(Ordering::Acquire));
        // Relaxed: a private, monotonic flag shared by our two halves.
        let was_aware = self.peer_aware.load(Ordering::Relaxed);
        let (state, aware) = judge(live, marker, was_aware).map_err(|e| self.fail(e))?;
        if aware && !was_aware {
            self.peer_aware.store(true, Ordering::Relaxed);
        }
        Ok(state)
    }

    /// Asks the peer for an event on its next `bit` step (read or write), by
    /// setting `bit` in the peer's notify byte, then orders that request
    /// before the caller re-reads the peer's index.
    fn request(&self, bit: u8) {
        self.control()
            .notify(self.side.peer())
            .fetch_or(bit, Ordering::Relaxed);
        // Full fence (store -> load): the request must be visible before we
        // re-read the peer's index. Pairs with the fence in `take_request`
        // on the peer's side; without both, the peer could move its index
        // unseen by us while we miss its bit clearing, and both would wait.
        fence(Ordering::SeqCst);
    }

    /// After storing our index: fetch-and-clears `bit` in our own notify
    /// byte; Yes when the peer had asked for it.
    fn take_request(&self, bit: u8) -> NotifyNeeded {
        // Full fence (store -> load): our index store must be visible before
        // we read the peer's request bits. Pairs with the fence in `request`
        // on the peer's side: either the peer's re-read sees our new index,
        // or we see its bit here and send the event. No lost wakeup.
        fence(Ordering::SeqCst);
        let prev = self
            .control()
            .notify(self.side)
            .fetch_and(!bit, Ordering::Relaxed);
        NotifyNeeded::from(prev & bit != 0)
    }
}

/// Geometry of one ring, as this end set it up (never re-read from the
/// page).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    pub(crate) ring: RingId,
    /// Ring size in bytes, a power of two of at most 2^20.
    pub(crate) size: u32,
    /// Offset of the ring's first byte within its region.
    pub(crate) base: usize,
}

impl Geometry {
    fn offset(&self, index: u32) -> usize {
        self.base + (index & (self.size - 1)) as usize
    }

    /// Bytes in the ring between `cons` and `prod`, or `CorruptIndex` when
    /// that is more than the ring holds (in u32 arithmetic, so an index
    /// that went backwards is caught as well).
    fn used(&self, cons: u32, prod: u32) -> Result<u32, StreamError> {
        let used = prod.wrapping_sub(cons);
        if used > self.size {
            return Err(StreamError::CorruptIndex {
                ring: self.ring,
                cons,
                prod,
                size: self.size,
            });
        }
        Ok(used)
    }
}

/// The writing half: appends bytes to this end's transmit ring.
#[derive(Debug)]
pub struct Producer {
    shared: Arc<Shared>,
    geo: Geometry,
    /// Our producer index; the shared copy is only ever a store of this.
    prod: u32,
    stats: RingStats,
}

impl Producer {
    pub(crate) fn new(shared: Arc<Shared>, geo: Geometry, prod: u32) -> Producer {
        Producer {
            shared,
            geo,
            prod,
            stats: RingStats::default(),
        }
    }

    /// The ring written.
    pub fn ring(&self) -> RingId {
        self.geo.ring
    }

    /// Ring size in bytes.
    pub fn capacity(&self) -> usize {
        self.geo.size as usize
    }

    /// Counters so far.
    pub fn stats(&self) -> RingStats {
        self.stats
    }

    /// Free space right now, in bytes. Asks for no event.
    pub fn writable(&self) -> Result<usize, StreamError> {
        self.shared.check()?;
        self.check_own()?;
        self.free()
    }

    /// Copies as much of `data` as fits into the ring and publishes it.
    ///
    /// Returns the bytes written and whether the peer asked to be woken
    /// (then send it an event). When the ring is full (0 written from a
    /// non-empty `data`) the peer has been asked to send an event when it
    /// reads: wait for it, then call again.
    ///
    /// The peer's live byte is not looked at (libxenvchan's write refuses
    /// once the peer is gone): the caller decides with
    /// [`Producer::peer_state`], typically before waiting. Writing after this
    /// end closed is [`StreamError::Closed`].
    pub fn write(&mut self, data: &[u8]) -> Result<(usize, NotifyNeeded), StreamError> {
        self.shared.check()?;
        if self.shared.is_closed() {
            return Err(StreamError::Closed {
                ring: self.geo.ring,
            });
        }
        if data.is_empty() {
            return Ok((0, NotifyNeeded::No));
        }
        self.check_own()?;
        let mut free = self.free()?;
        if free == 0 {
            // We would block: ask the reader to tell us when it consumes,
            // then look again in case it did so before seeing the request.
            self.shared.request(VCHAN_NOTIFY_READ);
            self.stats.wakeups_requested += 1;
            free = self.free()?;
            if free == 0 {
                return Ok((0, NotifyNeeded::No));
            }
        }
        let n = free.min(data.len());
        self.copy_in(&data[..n]);
        self.prod = self.prod.wrapping_add(n as u32);
        // Release: the bytes copied in above are visible to a reader that
        // sees the new index (its acquire load of prod).
        self.shared
            .control()
            .prod(self.geo.ring)
            .store(self.prod, Ordering::Release);
        let notify = self.shared.take_request(VCHAN_NOTIFY_WRITE);
        self.stats.bytes += n as u64;
        self.stats.count(notify);
        Ok((n, notify))
    }

    /// Whether the peer has closed, died, or not yet connected.
    pub fn peer_state(&self) -> Result<PeerState, StreamError> {
        self.shared.peer_state()
    }

    /// Closes the whole channel (both rings) in order: our clean-close
    /// marker becomes 2, then our live byte 0. Yes the first time: send the
    /// peer an event so that it notices.
    pub fn close(&self) -> NotifyNeeded {
        self.shared.close(true)
    }

    /// Reads the reader's index once, checks it, and returns the free space.
    fn free(&self) -> Result<usize, StreamError> {
        // Acquire pairs with the reader's release store of cons: its copies
        // out of the ring happen before we overwrite those bytes.
        let cons = self
            .shared
            .control()
            .cons(self.geo.ring)
            .load(Ordering::Acquire);
        let used = self
            .geo
            .used(cons, self.prod)
            .map_err(|e| self.shared.fail(e))?;
        Ok((self.geo.size - used) as usize)
    }

    /// Only we write our prod: anything else there is the peer's doing.
    fn check_own(&self) -> Result<(), StreamError> {
        // Relaxed: coherence alone returns our own last store, unless
        // someone else stored since.
        let found = self
            .shared
            .control()
            .prod(self.geo.ring)
            .load(Ordering::Relaxed);
        if found != self.prod {
            return Err(self.shared.fail(StreamError::IndexChanged {
                ring: self.geo.ring,
                field: "prod",
                expected: self.prod,
                found,
            }));
        }
        Ok(())
    }

    /// Copies `data` (at most the free space) to the ring at `prod`,
    /// wrapping at the end.
    fn copy_in(&self, data: &[u8]) {
        let region = self.shared.data(self.geo.ring);
        let at = self.geo.offset(self.prod);
        let first = data.len().min(self.geo.base + self.geo.size as usize - at);
        region.write(at, &data[..first]);
        if first < data.len() {
            region.write(self.geo.base, &data[first..]);
        }
    }

    #[cfg(test)]
    pub(crate) fn seek_for_test(&mut self, index: u32) {
        self.prod = index;
        self.shared
            .control()
            .prod(self.geo.ring)
            .store(index, Ordering::Release);
    }
}

/// The reading half: takes bytes from this end's receive ring.
#[derive(Debug)]
pub struct Consumer {
    shared: Arc<Shared>,
    geo: Geometry,
    /// Our consumer index; the shared copy is only ever a store of this.
    cons: u32,
    stats: RingStats,
}

impl Consumer {
    pub(crate) fn new(shared: Arc<Shared>, geo: Geometry, cons: u32) -> Consumer {
        Consumer {
            shared,
            geo,
            cons,
            stats: RingStats::default(),
        }
    }

    /// The ring read.
    pub fn ring(&self) -> RingId {
        self.geo.ring
    }

    /// Ring size in bytes.
    pub fn capacity(&self) -> usize {
        self.geo.size as usize
    }

    /// Counters so far.
    pub fn stats(&self) -> RingStats {
        self.stats
    }

    /// Bytes waiting to be read right now. Asks for no event.
    pub fn readable(&self) -> Result<usize, StreamError> {
        self.shared.check()?;
        self.check_own()?;
        self.ready()
    }

    /// Copies up to `buf.len()` waiting bytes into `buf` and frees their
    /// space in the ring.
    ///
    /// Returns the bytes read and whether the peer asked to be woken (then
    /// send it an event). When nothing is waiting (0 read into a non-empty
    /// `buf`) the peer has been asked to send an event when it writes: check
    /// [`Consumer::at_eof`], else wait for the event and call again.
    ///
    /// Reading stays possible after this end closed: the peer may have
    /// written before it noticed.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<(usize, NotifyNeeded), StreamError> {
        self.shared.check()?;
        if buf.is_empty() {
            return Ok((0, NotifyNeeded::No));
        }
        self.check_own()?;
        let mut ready = self.ready()?;
        if ready == 0 {
            // We would block: ask the writer to tell us when it writes, then
            // look again in case it did so before seeing the request.
            self.shared.request(VCHAN_NOTIFY_WRITE);
            self.stats.wakeups_requested += 1;
            ready = self.ready()?;
            if ready == 0 {
                return Ok((0, NotifyNeeded::No));
            }
        }
        let n = ready.min(buf.len());
        self.copy_out(&mut buf[..n]);
        self.cons = self.cons.wrapping_add(n as u32);
        // Release: our copies out of the ring above happen before a writer
        // that sees the new index (acquire) reuses those bytes.
        self.shared
            .control()
            .cons(self.geo.ring)
            .store(self.cons, Ordering::Release);
        let notify = self.shared.take_request(VCHAN_NOTIFY_READ);
        self.stats.bytes += n as u64;
        self.stats.count(notify);
        Ok((n, notify))
    }

    /// True when the peer has closed and everything it wrote has been
    /// read: the end of the stream. [`StreamError::PeerDied`] instead when
    /// the peer's marker says it died ([`PeerState::Died`]), also only once
    /// everything it wrote has been read. The live byte (and marker) are
    /// read before the index, so bytes written just before the close are
    /// never lost.
    pub fn at_eof(&self) -> Result<bool, StreamError> {
        match self.peer_state()? {
            PeerState::Closed => Ok(self.readable()? == 0),
            PeerState::Died if self.readable()? == 0 => Err(StreamError::PeerDied {
                ring: self.geo.ring,
            }),
            _ => Ok(false),
        }
    }

    /// Whether the peer has closed, died, or not yet connected.
    pub fn peer_state(&self) -> Result<PeerState, StreamError> {
        self.shared.peer_state()
    }

    /// Closes the whole channel (both rings) in order: our clean-close
    /// marker becomes 2, then our live byte 0. Yes the first time: send the
    /// peer an event so that it notices.
    pub fn close(&self) -> NotifyNeeded {
        self.shared.close(true)
    }

    /// Reads the writer's index once, checks it, and returns the bytes
    /// waiting.
    fn ready(&self) -> Result<usize, StreamError> {
        // Acquire pairs with the writer's release store of prod: the bytes
        // it copied in before are visible to our copy out.
        let prod = self
            .shared
            .control()
            .prod(self.geo.ring)
            .load(Ordering::Acquire);
        let used = self
            .geo
            .used(self.cons, prod)
            .map_err(|e| self.shared.fail(e))?;
        Ok(used as usize)
    }

    /// Only we write our cons: anything else there is the peer's doing.
    fn check_own(&self) -> Result<(), StreamError> {
        // Relaxed: coherence alone returns our own last store, unless
        // someone else stored since.
        let found = self
            .shared
            .control()
            .cons(self.geo.ring)
            .load(Ordering::Relaxed);
        if found != self.cons {
            return Err(self.shared.fail(StreamError::IndexChanged {
                ring: self.geo.ring,
                field: "cons",
                expected: self.cons,
                found,
            }));
        }
        Ok(())
    }

    /// Copies `buf.len()` (at most the waiting) bytes from the ring at
    /// `cons`, wrapping at the end.
    fn copy_out(&self, buf: &mut [u8]) {
        let region = self.shared.data(self.geo.ring);
        let at = self.geo.offset(self.cons);
        let first = buf.len().min(self.geo.base + self.geo.size as usize - at);
        let (a, b) = buf.split_at_mut(first);
        region.read(at, a);
        if !b.is_empty() {
            region.read(self.geo.base, b);
        }
    }

    #[cfg(test)]
    pub(crate) fn seek_for_test(&mut self, index: u32) {
        self.cons = index;
        self.shared
            .control()
            .cons(self.geo.ring)
            .store(index, Ordering::Release);
    }
}

impl RingStats {
    fn count(&mut self, notify: NotifyNeeded) {
        match notify {
            NotifyNeeded::Yes => self.notifies_needed += 1,
            NotifyNeeded::No => self.notifies_suppressed += 1,
        }
    }
}
