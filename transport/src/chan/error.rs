//! The one error type of the chan multiplexer.

use std::io;
use std::sync::Arc;

use super::frame::{FrameError, Role};

/// Why a multiplexer operation failed.
///
/// Every variant but [`ChanError::Reset`], [`ChanError::IdsExhausted`] and
/// [`ChanError::TooManyChannels`] ends the whole connection: each channel
/// then reports it (as an [`io::Error`] of kind
/// [`io::ErrorKind::ConnectionReset`] carrying this error, see
/// [`ChanError::to_io`]) once its buffered data has been read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ChanError {
    /// The peer sent bytes that are not a valid frame, a HELLO of another
    /// version, or no HELLO magic at all.
    #[error("chan mux: {0}")]
    Frame(#[from] FrameError),
    /// A valid frame at the wrong moment: a channel id never opened, data
    /// beyond the window granted, data after EOF, a second HELLO, ...
    #[error("chan mux: protocol violation by the peer on channel {channel}: {reason}")]
    Protocol {
        /// The channel id of the offending frame (0: the connection).
        channel: u32,
        /// What was wrong.
        reason: String,
    },
    /// The peer ended the connection with a RESET on channel 0.
    #[error("chan mux: the peer aborted the connection: {reason}")]
    PeerAborted {
        /// The peer's reason.
        reason: String,
    },
    /// Both ends have the same role, so their channel ids would collide.
    #[error("chan mux: both ends are configured as the {role}; one must be the client, the other the server")]
    SameRole {
        /// The role both claim.
        role: Role,
    },
    /// Reading or writing the underlying byte stream failed.
    #[error("chan mux: i/o on the connection: {0}")]
    Io(Arc<io::Error>),
    /// The byte stream ended while channels were still open.
    #[error("chan mux: the peer closed the connection with {open} channel(s) still open")]
    ConnectionLost {
        /// Channels that had not finished.
        open: usize,
    },
    /// The connection has ended in order (the peer closed it with no
    /// channel open, or every handle was dropped); nothing more can be
    /// opened.
    #[error("chan mux: the connection is closed")]
    Closed,
    /// The peer reset this channel (for [`super::MuxHandle::open`]: it
    /// refused it).
    #[error("chan {channel}: reset by the peer: {reason}")]
    Reset {
        /// The channel id.
        channel: u32,
        /// The peer's reason.
        reason: String,
    },
    /// This end has used every channel id of its parity (2^31 opens).
    #[error("chan mux: every channel id of this end has been used")]
    IdsExhausted,
    /// [`super::MuxConfig::max_channels`] channels are open already.
    #[error("chan mux: {max} channels are open, the configured maximum")]
    TooManyChannels {
        /// The limit.
        max: usize,
    },
}

impl ChanError {
    /// This error as an [`io::Error`] for a channel's `AsyncRead` /
    /// `AsyncWrite` ([`io::ErrorKind::ConnectionReset`], or
    /// [`io::ErrorKind::NotConnected`] for [`ChanError::Closed`]); the
    /// [`ChanError`] is its inner error.
    pub fn to_io(&self) -> io::Error {
        let kind = match self {
            ChanError::Closed => io::ErrorKind::NotConnected,
            _ => io::ErrorKind::ConnectionReset,
        };
        io::Error::new(kind, self.clone())
    }

    /// Whether this error was found here in what the peer sent (so the
    /// peer is told with a connection RESET before the stream is closed).
    pub(crate) fn is_peer_fault(&self) -> bool {
        matches!(
            self,
            ChanError::Frame(_) | ChanError::Protocol { .. } | ChanError::SameRole { .. }
        )
    }
}

impl From<io::Error> for ChanError {
    fn from(e: io::Error) -> ChanError {
        ChanError::Io(Arc::new(e))
    }
}
