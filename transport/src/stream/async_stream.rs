//! A vchan end as a tokio byte stream: [`VchanStream`] (`AsyncRead +
//! AsyncWrite`), split with [`VchanStream::into_split`] into a
//! [`VchanReader`] and a [`VchanWriter`] that two tasks can own.
//!
//! # The driver: one poller and two waker slots per connection
//!
//! Both halves share one [`Driver`]: the connection's event channel and two
//! waker slots (read, write). A half that would block stores its task's
//! waker in its slot and polls the event channel with the driver's own
//! waker, which wakes *both* slots when an event arrives (one event may
//! answer either half, and events coalesce). The slots' lock is released
//! before any waker runs. There is no queue: at most two wakers are held.
//!
//! ```text
//!   reader task            Driver                      writer task
//!   -----------            ------                      -----------
//!   read() -> 0 bytes
//!   slot[read] = waker ->  [read, write] slots  <- slot[write] = waker
//!   poll_event(driver waker)                           (ring full)
//!                          event arrives:
//!                          take both slots, unlock,
//!                          wake both ------------------> retry write
//!   retry read <-----------'
//! ```
//!
//! This is the house's "one driver per connection" without a spawned task:
//! whichever half waits does the polling, so nothing runs when nobody
//! waits, no runtime handle is needed to build a stream, and dropping the
//! last half releases the port, the grants and the mappings at once (a
//! spawned driver would release them whenever the runtime got round to
//! dropping the aborted task).
//!
//! # Notifications
//!
//! The peer is sent an event only when the sans-IO layer says
//! [`NotifyNeeded::Yes`] (it asked with its notify bits), and once on close.
//!
//! # End of stream and errors
//!
//! * **EOF** (`read` returns 0 bytes): the peer closed in order
//!   (`poll_shutdown` or dropping both halves; libxenvchan's close) and
//!   everything it wrote has been read.
//! * **Peer death**: the peer's unmap notification clears its live byte,
//!   as a close does, but leaves its clean-close marker at 1 (see
//!   [`super::MarkerSpot`]). Once everything it wrote has been read, `read`
//!   fails with [`std::io::ErrorKind::ConnectionReset`] carrying
//!   [`StreamError::PeerDied`]. A peer that does not write the marker (a
//!   libxenvchan program) cannot be told apart: its death is EOF, as in
//!   libxenvchan, and protocols that must tell a truncated stream from a
//!   complete one then need their own framing.
//! * **Writing** to a peer whose live byte is 0 fails with
//!   [`std::io::ErrorKind::BrokenPipe`] (carrying [`StreamError::PeerDied`]
//!   when the peer died), also when a write is blocked on a full ring at the
//!   moment the peer closes or dies.
//! * **A broken peer** (an index that puts more than a ring between `prod`
//!   and `cons`, an index of ours changed, a live byte or clean-close
//!   marker out of range) fails
//!   with [`std::io::ErrorKind::InvalidData`] on both halves, for ever; the
//!   [`StreamError`] is inside ([`std::io::Error::get_ref`]). Nothing of the
//!   broken ring is read as data, and the channel is closed.
//! * Writing after our own `poll_shutdown` fails with `BrokenPipe` carrying
//!   [`StreamError::Closed`].
//!
//! # Cancellation
//!
//! `poll_read`/`poll_write` move bytes only when they return `Ready`, so the
//! futures of `AsyncReadExt::read` and `AsyncWriteExt::write` are
//! cancellation safe: dropping one loses no data. (`write_all`/`read_exact`
//! are not, as for any tokio stream: they may have moved part of the data.)

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll, Wake, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{Consumer, NotifyNeeded, PeerState, Producer, RingStats, StreamError, Vchan};
use crate::platform::{DomId, EventChannel};

const READ: usize = 0;
const WRITE: usize = 1;

/// The two waker slots; the driver's own waker wakes both.
#[derive(Debug, Default)]
struct Slots {
    wakers: Mutex<[Option<Waker>; 2]>,
}

impl Slots {
    fn wake_all(&self) {
        let taken = {
            let mut g = self.wakers.lock().expect("vchan waker slots");
            [g[READ].take(), g[WRITE].take()]
        };
        // The lock is released: a woken task may register again at once.
        for w in taken.into_iter().flatten() {
            w.wake();
        }
    }
}

impl Wake for Slots {
    fn wake(self: Arc<Self>) {
        self.wake_all();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.wake_all();
    }
}

/// Per-connection state shared by the two halves.
#[derive(Debug)]
struct Driver {
    chan: Box<dyn EventChannel>,
    slots: Arc<Slots>,
    waker: Waker,
    peer: DomId,
    /// Halves still alive; the last one to drop closes the channel.
    halves: AtomicUsize,
    events: Arc<EventCounts>,
}

impl Driver {
    /// Registers `cx` for direction `dir` and polls the event channel.
    /// Ready(Ok) when an event arrived (the other half is woken too: the
    /// event may be its); Pending when the task will be woken by one.
    fn poll_event(&self, dir: usize, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        {
            let mut g = self.slots.wakers.lock().expect("vchan waker slots");
            match &mut g[dir] {
                Some(w) if w.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            }
        }
        let mut ecx = Context::from_waker(&self.waker);
        match self.chan.poll_event(&mut ecx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(r) => {
                self.events.received.fetch_add(1, Ordering::Relaxed);
                // Our own slot is woken as well: a spurious wakeup at worst.
                self.slots.wake_all();
                Poll::Ready(r.map_err(|e| {
                    io::Error::other(format!(
                        "vchan with domain {}: waiting for an event: {e}",
                        self.peer
                    ))
                }))
            }
        }
    }

    fn notify(&self, n: NotifyNeeded) -> io::Result<()> {
        if n.is_needed() {
            self.events.sent.fetch_add(1, Ordering::Relaxed);
            self.chan.notify().map_err(|e| {
                io::Error::other(format!(
                    "vchan with domain {}: notifying the peer: {e}",
                    self.peer
                ))
            })?;
        }
        Ok(())
    }

    /// Called by each half's drop; true for the last one.
    fn release(&self) -> bool {
        self.halves.fetch_sub(1, Ordering::AcqRel) == 1
    }
}

/// Counters of one connection, readable at run time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// The receive half's counters.
    pub rx: RingStats,
    /// The transmit half's counters.
    pub tx: RingStats,
    /// Events sent to the peer (both halves).
    pub events_sent: u64,
    /// Event wakeups received (both halves).
    pub events_received: u64,
}

/// Maps a sans-IO error to the I/O error a stream user sees (see the
/// module docs); the [`StreamError`] stays inside.
fn io_error(e: StreamError) -> io::Error {
    let kind = match e {
        StreamError::Closed { .. } => io::ErrorKind::BrokenPipe,
        StreamError::PeerDied { .. } => io::ErrorKind::ConnectionReset,
        StreamError::CorruptIndex { .. }
        | StreamError::IndexChanged { .. }
        | StreamError::BadLive { .. }
        | StreamError::BadMarker { .. } => io::ErrorKind::InvalidData,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e)
}

/// Events sent and received by one stream (both halves).
#[derive(Debug, Default)]
pub struct EventCounts {
    /// Events sent to the peer.
    pub sent: AtomicU64,
    /// Event wakeups received.
    pub received: AtomicU64,
}

/// One end of a vchan as a tokio byte stream. Reading and writing may go on
/// at the same time from two tasks after [`VchanStream::into_split`].
/// Dropping both halves closes the channel (live byte 0, one event) and
/// releases the port, the grants and the mappings.
#[derive(Debug)]
pub struct VchanStream {
    reader: VchanReader,
    writer: VchanWriter,
}

/// The reading half of a [`VchanStream`].
#[derive(Debug)]
pub struct VchanReader {
    rx: Consumer,
    driver: Arc<Driver>,
}

/// The writing half of a [`VchanStream`].
#[derive(Debug)]
pub struct VchanWriter {
    tx: Producer,
    driver: Arc<Driver>,
}

impl VchanStream {
    /// Wraps a set-up end and the event channel bound to the peer's port.
    /// The setup functions ([`super::VchanServer`], [`super::connect`])
    /// call this; use it directly for an end set up by hand.
    pub fn new(vchan: Vchan, chan: Box<dyn EventChannel>) -> VchanStream {
        let slots = Arc::new(Slots::default());
        let driver = Arc::new(Driver {
            peer: chan.remote_domid(),
            chan,
            waker: Waker::from(slots.clone()),
            slots,
            halves: AtomicUsize::new(2),
            events: Arc::default(),
        });
        let (rx, tx) = vchan.into_split();
        VchanStream {
            reader: VchanReader {
                rx,
                driver: driver.clone(),
            },
            writer: VchanWriter { tx, driver },
        }
    }

    /// The two halves, for two tasks. The channel closes when both are
    /// dropped (or at [`AsyncWriteExt::shutdown`](tokio::io::AsyncWriteExt::shutdown)
    /// on the writer).
    pub fn into_split(self) -> (VchanReader, VchanWriter) {
        (self.reader, self.writer)
    }

    /// The domain at the other end.
    pub fn peer(&self) -> DomId {
        self.reader.driver.peer
    }

    /// What the peer's live byte says now.
    pub fn peer_state(&self) -> Result<PeerState, StreamError> {
        self.reader.rx.peer_state()
    }

    /// A handle on the event counters that stays readable after the
    /// stream has moved (into a task, a multiplexer) or been dropped; it
    /// holds no port or memory.
    pub fn event_counts(&self) -> Arc<EventCounts> {
        self.reader.driver.events.clone()
    }

    /// Counters so far.
    pub fn stats(&self) -> StreamStats {
        let mut s = self.reader.stats();
        s.tx = self.writer.tx.stats();
        s
    }
}

impl VchanReader {
    /// Counters so far (`tx` is left at zero: the writer has it).
    pub fn stats(&self) -> StreamStats {
        StreamStats {
            rx: self.rx.stats(),
            tx: RingStats::default(),
            events_sent: self.driver.events.sent.load(Ordering::Relaxed),
            events_received: self.driver.events.received.load(Ordering::Relaxed),
        }
    }
}

impl VchanWriter {
    /// Counters so far (`rx` is left at zero: the reader has it).
    pub fn stats(&self) -> StreamStats {
        StreamStats {
            rx: RingStats::default(),
            tx: self.tx.stats(),
            events_sent: self.driver.events.sent.load(Ordering::Relaxed),
            events_received: self.driver.events.received.load(Ordering::Relaxed),
        }
    }
}

impl AsyncRead for VchanReader {
    /// Reads what is waiting; 0 bytes at the end of the stream (see the
    /// module docs). Cancellation safe.
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            let (n, notify) = this.rx.read(buf.initialize_unfilled()).map_err(io_error)?;
            if n > 0 {
                buf.advance(n);
                this.driver.notify(notify)?;
                return Poll::Ready(Ok(()));
            }
            // Nothing waiting, and the writer has been asked for an event.
            // The live byte is read before the index: bytes written just
            // before a close are never taken for the end.
            if this.rx.at_eof().map_err(io_error)? {
                return Poll::Ready(Ok(()));
            }
            ready!(this.driver.poll_event(READ, cx))?;
        }
    }
}

impl AsyncWrite for VchanWriter {
    /// Writes as much as fits now; waits only while the ring is full.
    /// Cancellation safe.
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        loop {
            match this.tx.peer_state().map_err(io_error)? {
                PeerState::Closed => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        format!(
                            "vchan {} ring: the peer (domain {}) closed the channel",
                            this.tx.ring(),
                            this.driver.peer
                        ),
                    )));
                }
                PeerState::Died => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        StreamError::PeerDied {
                            ring: this.tx.ring(),
                        },
                    )));
                }
                PeerState::Connected | PeerState::NotYetConnected => {}
            }
            let (n, notify) = this.tx.write(data).map_err(io_error)?;
            if n > 0 {
                this.driver.notify(notify)?;
                return Poll::Ready(Ok(n));
            }
            // Full, and the reader has been asked for an event.
            ready!(this.driver.poll_event(WRITE, cx))?;
        }
    }

    /// Every write is published at once: nothing to flush.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Closes the whole channel in order (vchan has no half-close): our
    /// clean-close marker becomes 2, our live byte 0, and the peer is sent
    /// an event; the peer reads EOF after our data. Reading stays possible
    /// (the peer may have written before it noticed); writing fails.
    /// Completes at once; cancellation safe.
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        Poll::Ready(this.driver.notify(this.tx.close()))
    }
}

impl AsyncRead for VchanStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().reader).poll_read(cx, buf)
    }
}

impl AsyncWrite for VchanStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().writer).poll_write(cx, data)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().writer).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().writer).poll_shutdown(cx)
    }
}

impl Drop for VchanReader {
    fn drop(&mut self) {
        if self.driver.release() {
            let _ = self.driver.notify(self.rx.close());
        }
    }
}

impl Drop for VchanWriter {
    fn drop(&mut self) {
        if self.driver.release() {
            let _ = self.driver.notify(self.tx.close());
        }
    }
}
