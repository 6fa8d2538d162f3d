//! Many byte-stream channels multiplexed over one byte stream (in
//! production one vchan [`crate::stream::VchanStream`] between a frontend
//! and a backend domain), and the proxy that exposes them as Unix sockets
//! on one end and connects them to a Unix or TCP target on the other, as
//! Xen's `vchan-socket-proxy` does for a single connection.
//!
//! | file | what |
//! |---|---|
//! | `frame.rs` | the sans-IO wire format: [`frame::FrameHeader`], [`frame::Frame`], [`frame::decode`] |
//! | `state.rs` | the channel table, windows and buffers; frames in, bytes out (no I/O) |
//! | `entry.rs` | one channel's entry in the table; the wakeups delivered after the lock |
//! | `rxbuf.rs` | one channel's unread data and the bound on its memory ([`RX_MEMORY_OVERHEAD`]) |
//! | `driver.rs` | the one driver task: a read loop and a write loop over the stream |
//! | `mux.rs` | [`Mux`], [`MuxHandle`], [`Incoming`], [`Channel`], [`MuxConfig`], [`MuxStats`] |
//! | `error.rs` | [`ChanError`] |
//! | `proxy.rs` | [`Target`], [`serve_listener`], [`serve_incoming`], [`ProxySummary`] |
//!
//! ```text
//!   frontend domain                                   backend domain
//!   client --unix--> serve_listener                   serve_incoming --unix/tcp--> target
//!   client --unix-->   Mux (client) ==== vchan ====   Mux (server)   --unix/tcp--> target
//!                      one channel per connection, both ways, half close
//! ```
//!
//! # Frames
//!
//! Every frame is a 12-byte little-endian header and a payload (details
//! and the HELLO layout in [`frame`]):
//!
//! ```text
//!  0          4      5       6          8          12
//!  +----------+------+-------+----------+----------+----------------------
//!  | channel  | kind | flags | reserved |  length  | payload (length bytes)
//!  |  (u32)   | (u8) | (u8)  | (u16, 0) |  (u32)   |
//!  +----------+------+-------+----------+----------+----------------------
//!  kinds: HELLO 1, OPEN 2, OPEN_OK 3, DATA 4, CREDIT 5, EOF 6, RESET 7
//! ```
//!
//! # The exchange
//!
//! ```text
//!   client end (odd ids)                          server end (even ids)
//!   HELLO v1, window Wc  ------------------------>  
//!                        <------------------------  HELLO v1, window Ws
//!   OPEN 1               ------------------------>  (queued for accept)
//!                        <------------------------  OPEN_OK 1
//!   DATA 1 (<= Ws bytes in flight) -------------->  buffered for the reader
//!                        <------------------------  CREDIT 1 +n (n bytes read)
//!   EOF 1  (no more from the client) ------------>  read returns 0
//!                        <------------------------  DATA 1 ... (still allowed)
//!                        <------------------------  EOF 1
//!   both EOFs: channel 1 is finished; ids are never reused
//!
//!   refused or aborted:  <------------------------  RESET 1 "connect to tcp:...: refused"
//!   broken peer / wrong version:  RESET 0 "<reason>", then the stream closes
//! ```
//!
//! # Invariants
//!
//! * Each end sends its HELLO first and checks the peer's before anything
//!   else: magic, version ([`frame::PROTOCOL_VERSION`]; a mismatch is
//!   [`frame::FrameError::Version`]) and a role different from its own.
//! * Channel ids are allocated by the opener, odd by the [`Role::Client`],
//!   even by the [`Role::Server`], strictly increasing and never reused,
//!   so both ends may open at once without collisions, and a frame for an
//!   id this end already closed (in flight when it closed) is told from one
//!   for an id never opened (a violation).
//! * Flow control per channel: an end never sends more DATA than the
//!   window the peer granted (its HELLO's window plus its CREDITs, less
//!   what was sent), and treats more than it granted as a violation.
//!   Unread data per channel is therefore bounded by the window, and the
//!   driver never waits on a channel: a slow reader stalls only its own
//!   channel's sender. The memory it takes is bounded too: at most the
//!   window plus [`RX_MEMORY_OVERHEAD`] per channel (small payloads are
//!   copied into the channel's own chunks instead of keeping the shared
//!   read buffer alive; see `rxbuf.rs`).
//! * On each channel, DATA frames keep the order of the writes, and EOF
//!   follows the last DATA; a RESET may overtake DATA (it aborts).
//! * A fault of the peer (a bad frame, a violation) or an I/O error ends
//!   the whole connection: every channel, opener and acceptor gets the
//!   error (never a panic or a hang) and the stream is closed.
//! * One lock guards the state; wakers and open answers are delivered
//!   after it is released.

pub mod frame;

mod driver;
mod entry;
mod error;
mod mux;
mod proxy;
mod rxbuf;
mod state;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_proxy;

pub use error::ChanError;
pub use frame::{FrameError, Role};
pub use mux::{Channel, Incoming, Mux, MuxConfig, MuxHandle, MuxStats, DEFAULT_WINDOW, MAX_WINDOW};
mod stats;
pub use proxy::{serve_incoming, serve_listener, ProxySummary, Target, TargetError};
pub use rxbuf::RX_MEMORY_OVERHEAD;
pub use stats::ChanStats;
