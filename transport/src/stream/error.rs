//! The one error type of the vchan byte stream.

use super::control::RingId;

/// Why a vchan operation failed.
///
/// Errors caused by a broken peer ([`StreamError::CorruptIndex`],
/// [`StreamError::IndexChanged`], [`StreamError::BadLive`],
/// [`StreamError::BadMarker`]) are sticky: the channel is closed (our live
/// byte set to 0, without the clean-close marker) and every later call on
/// either half returns the same error. [`StreamError::PeerDied`] is not a
/// fault of the protocol: it is reported each time the end of the stream
/// is reached. Setup errors leave nothing behind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The peer's index puts more than a ring's worth of bytes between
    /// `cons` and `prod` (`prod - cons > size` in u32 arithmetic): the peer
    /// is broken or hostile. Nothing was read as data.
    #[error("vchan {ring} ring: corrupt indexes, cons {cons} and prod {prod} are more than the ring's {size} bytes apart")]
    CorruptIndex {
        /// The ring whose indexes are inconsistent.
        ring: RingId,
        /// The consumer index seen.
        cons: u32,
        /// The producer index seen.
        prod: u32,
        /// The ring's size in bytes.
        size: u32,
    },
    /// An index only this side writes was changed in shared memory by
    /// someone else.
    #[error("vchan {ring} ring: our {field} index changed under us, from {expected} to {found}")]
    IndexChanged {
        /// The ring.
        ring: RingId,
        /// `"prod"` or `"cons"`.
        field: &'static str,
        /// The value we last stored.
        expected: u32,
        /// The value found.
        found: u32,
    },
    /// The peer's live byte holds a value libxenvchan never writes.
    #[error("vchan control page: the peer's live byte holds {value}, not 0, 1 or 2")]
    BadLive {
        /// The value found.
        value: u8,
    },
    /// The peer's marker byte (see [`crate::stream`]'s clean-close marker)
    /// holds a value no end writes.
    #[error("vchan control page: the peer's clean-close marker holds {value}, not 0, 1 or 2")]
    BadMarker {
        /// The value found.
        value: u8,
    },
    /// The peer's live byte is 0 but its marker says it did not close
    /// cleanly: it died (its unmap notification cleared the byte) or gave up
    /// on a fault. Everything it wrote before has been read; the stream may
    /// be truncated.
    #[error(
        "vchan {ring} ring: the peer went away without closing the channel (it died or aborted)"
    )]
    PeerDied {
        /// The ring read (or written) when it was noticed.
        ring: RingId,
    },
    /// We closed the channel; no more data may be written.
    #[error("vchan {ring} ring: write after this end closed the channel")]
    Closed {
        /// The ring that was written to.
        ring: RingId,
    },
    /// A ring order outside 10..=20.
    #[error("vchan {ring} ring: order {order} is outside 10..=20")]
    BadOrder {
        /// The ring.
        ring: RingId,
        /// The order given or found.
        order: u16,
    },
    /// Both rings have the same in-page order, so both would sit at the same
    /// offset of the control page.
    #[error(
        "vchan control page: both rings have order {order}, so both would sit at offset {offset}"
    )]
    InPageClash {
        /// The shared order (10 or 11).
        order: u16,
        /// Their common offset.
        offset: usize,
    },
    /// The grant list runs into an in-page ring.
    #[error("vchan control page: {count} grant references end at byte {end}, past the in-page {ring} ring at offset {offset}")]
    GrantsOverlapRing {
        /// Total number of grant references.
        count: usize,
        /// Byte offset where the list ends.
        end: usize,
        /// The in-page ring it runs into.
        ring: RingId,
        /// Where that ring starts.
        offset: usize,
    },
    /// The memory or grant list given for a ring does not fit its order.
    #[error("vchan {ring} ring: {why}")]
    BadSetup {
        /// The ring.
        ring: RingId,
        /// What does not fit.
        why: String,
    },
    /// The control page region cannot hold a control page.
    #[error("vchan control page: {why}")]
    BadControlPage {
        /// What is wrong with it.
        why: String,
    },
    /// A XenStore value of the vchan handshake is not a non-zero decimal
    /// number.
    #[error("vchan xenstore {key}: {value:?} is not a non-zero decimal number")]
    BadXenstoreValue {
        /// The key (`ring-ref` or `event-channel`).
        key: &'static str,
        /// The value read.
        value: String,
    },
}
