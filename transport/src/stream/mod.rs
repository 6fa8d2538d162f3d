//! Byte streams in libxenvchan's layout: the sans-IO core.
//!
//! A vchan is one control page (header and `grants[]`, see
//! [`crate::abi::vchan`]) and two byte rings: **left** carries client ->
//! server bytes, **right** server -> client. Rings of order 10 and 11 sit
//! inside the control page (offsets 1024 and 2048); orders 12 to 20 use
//! `2^(order - 12)` separately granted pages, listed in `grants[]` left
//! ring first. The server grants the pages and lays out the page
//! ([`Vchan::server_init`]); the client maps them and attaches
//! ([`Vchan::client_attach`]); [`VchanAddress`] names the XenStore nodes
//! where they meet. Nothing here waits, sleeps or sends events: each step
//! says whether the caller must notify the peer ([`NotifyNeeded`]).
//!
//! | file | what |
//! |---|---|
//! | `control.rs` | [`ControlPage`]: the page's fields as atomics; [`Layout`] read once and checked |
//! | `byte_ring.rs` | [`Producer`] and [`Consumer`], the two halves of a ring |
//! | `end.rs` | [`Vchan`]: server and client ends, [`RingSetup`] |
//! | `xs.rs` | the XenStore paths and values of libxenvchan |
//! | `marker.rs` | [`MarkerSpot`]: the clean-close marker, an extension that tells a close from a death |
//! | `error.rs` | [`StreamError`] |
//! | `async_stream.rs` | [`VchanStream`]: `AsyncRead + AsyncWrite` on tokio, its halves, the per-connection driver |
//! | `setup.rs` | [`VchanServer`] and [`connect`]: setup through the platform traits and the XenStore handshake; [`SetupError`] |
//!
//! # Invariants
//!
//! * Indexes run freely in u32 and wrap; byte `i` of the stream lives at
//!   `i & (size - 1)` of its ring. `0 <= prod - cons <= size` in u32
//!   arithmetic at all times; "data ready" is `prod - cons`, "space free" is
//!   `size - (prod - cons)`, as in libxenvchan's `io.c`.
//! * Each index has one writer: the producer owns `prod`, the consumer
//!   `cons`. A half keeps its own index privately and only ever stores it;
//!   finding another value there is [`StreamError::IndexChanged`].
//! * The peer's index is loaded once per step (twice when the step asked for
//!   an event, see below), checked, and only the checked copy is used. A
//!   value that breaks the first invariant is [`StreamError::CorruptIndex`]:
//!   nothing is read as data, the channel is closed (our live byte goes to
//!   0) and every later call on either half returns the same error.
//!   libxenvchan instead reports "no data / no space" for ever, a silent
//!   deadlock.
//! * The layout (orders, grants) is read from the page once by a client
//!   ([`ControlPage::read_layout`]); offsets and sizes then come only from
//!   that copy, so no peer value ever becomes an offset unchecked.
//! * Orderings: data is copied before the index is stored with Release,
//!   and the peer's index is loaded with Acquire before data is copied; a
//!   SeqCst fence separates an index store from the read of notify bits,
//!   and a notify request from the re-read of the index (below).
//!
//! # The notify bits
//!
//! Each side has a notify byte: `srv_notify` for the server, `cli_notify`
//! for the client. The *peer* sets bits in it to ask for an event
//! ([`VCHAN_NOTIFY_WRITE`]: "tell me when you write",
//! [`VCHAN_NOTIFY_READ`]: "tell me when you read"); the owner, after moving
//! data, fetch-and-clears the matching bit of its own byte and sends an
//! event only if it was set. The server starts with `cli_notify` =
//! WRITE (it wants the client's first bytes) and the client's attach sets
//! `srv_notify` = WRITE.
//!
//! ```text
//!   reader (consumer of ring R)                writer (producer of ring R)
//!   ---------------------------                ---------------------------
//!   read: ready = prod - cons == 0
//!   fetch_or(writer's byte, WRITE) ----+
//!   fence(SeqCst)                      |       copy bytes into the ring
//!   re-read prod:                      |       store prod (Release)
//!     > cons: read it, no wait         |       fence(SeqCst)
//!     == cons: return 0, wait    +-----+-----> fetch_and(own byte, !WRITE)
//!                                |               bit was set: NotifyNeeded::Yes
//!                                |               bit was clear: No (suppressed)
//!   event arrives <--------------+------------ caller sends one event
//!   read again
//!
//!   The same with roles swapped for a full ring: the writer sets READ in
//!   the reader's byte, fences, re-reads cons; the reader, after storing
//!   cons and fencing, fetch-and-clears READ in its own byte.
//! ```
//!
//! The two fences make a lost wakeup impossible: either the reader's re-read
//! sees the new `prod`, or the writer's fetch-and-clear sees the bit. A
//! request is made only when a step would block (0 bytes moved), so a busy
//! stream sends no events at all; a request left over from a re-read that
//! found data costs at most one spare event.
//!
//! # Live bytes
//!
//! `srv_live`/`cli_live`: 1 connected, 0 closed (or died: the unmap
//! notification of the dead side's mapping clears its byte, at
//! [`Side::live_offset`]), 2 not yet connected (the server's initial
//! `cli_live`). [`Vchan::close`] stores 0 with Release after our last data,
//! and a reader loads the peer's byte with Acquire before the index, so
//! [`Consumer::at_eof`] never drops bytes written just before a close.
//!
//! # Close or death: the clean-close marker
//!
//! In libxenvchan's layout a close and a death both leave the peer's live
//! byte at 0. Each xenring end therefore also writes a marker byte in a
//! part of the control page libxenvchan never touches (right after
//! `grants[]`, see [`MarkerSpot`]): 1 when it sets itself live, 2 just
//! before an orderly close ([`Vchan::close`], which dropping the stream
//! does too). A peer's 0 with its marker 2 is the end of the stream; with a
//! marker that showed 1 it is [`PeerState::Died`], and the reader gets
//! [`StreamError::PeerDied`] once the data is drained; with a marker that
//! never showed 1 (a libxenvchan peer) it is the end of the stream, as
//! before. A close after a protocol fault (the sticky errors) leaves our
//! marker at 1, so the peer sees a death, not a complete stream.

mod async_stream;
mod byte_ring;
mod control;
mod end;
mod error;
mod marker;
mod setup;
mod xs;

#[cfg(test)]
mod async_tests;
#[cfg(test)]
mod tests;

pub use async_stream::{EventCounts, StreamStats, VchanReader, VchanStream, VchanWriter};
pub use byte_ring::{Consumer, MappedMemory, Producer, RingStats};
pub use control::{ControlPage, Layout, PeerState, RingId, RingLayout, Side};
pub use end::{RingSetup, Vchan};
pub use error::StreamError;
pub use marker::{MarkerSpot, MARKER_ALIVE, MARKER_CLOSED};
pub use setup::{connect, connect_at, connect_direct, SetupError, VchanServer};
pub use xs::{
    format_value, parse_event_channel, parse_ring_ref, VchanAddress, EVENT_CHANNEL_KEY,
    RING_REF_KEY,
};

#[cfg(doc)]
use crate::abi::vchan::{VCHAN_NOTIFY_READ, VCHAN_NOTIFY_WRITE};

/// Whether the caller must send the peer an event after a step.
#[must_use = "the peer may be waiting for an event"]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum NotifyNeeded {
    /// The peer did not ask; send nothing.
    #[default]
    No,
    /// The peer asked to be woken: send one event.
    Yes,
}

impl NotifyNeeded {
    /// True for [`NotifyNeeded::Yes`].
    pub fn is_needed(self) -> bool {
        self == NotifyNeeded::Yes
    }
}

impl From<bool> for NotifyNeeded {
    fn from(b: bool) -> NotifyNeeded {
        if b {
            NotifyNeeded::Yes
        } else {
            NotifyNeeded::No
        }
    }
}

impl std::ops::BitOr for NotifyNeeded {
    type Output = NotifyNeeded;
    fn bitor(self, rhs: NotifyNeeded) -> NotifyNeeded {
        NotifyNeeded::from(self.is_needed() || rhs.is_needed())
    }
}
