//! Many byte-stream channels over one byte stream: [`Mux`], its
//! [`MuxHandle`] (open channels, stats), [`Incoming`] (channels the peer
//! opens) and [`Channel`] (`AsyncRead + AsyncWrite`).
//!
//! # Channel lifecycle
//!
//! * [`MuxHandle::open`] sends OPEN and returns the channel when OPEN_OK
//!   arrives, or [`ChanError::Reset`] when the peer refuses it (its
//!   [`Incoming`] is gone, its backlog is full, too many channels).
//! * Each end may write up to the window the other granted in its HELLO;
//!   reading returns credit (a CREDIT frame once a quarter of the window
//!   has been read).
//! * `poll_shutdown` sends EOF after the buffered bytes (half close: the
//!   other direction stays open); a read returns 0 bytes after the peer's
//!   EOF and everything before it.
//! * [`Channel::reset`] aborts with a reason the peer's reads and writes
//!   then report ([`std::io::ErrorKind::ConnectionReset`]).
//! * Dropping a channel: after both EOFs, nothing more is sent. After
//!   our `poll_shutdown` but before the peer's EOF, the buffered bytes and
//!   our EOF still go out, then a RESET tells the peer nobody reads any
//!   more. Without `poll_shutdown`, it is a RESET at once and unsent bytes
//!   are dropped: shut a channel down to close it cleanly.
//!
//! # Errors
//!
//! A channel reports the peer's RESET or the end of the connection (see
//! [`ChanError`]) after the bytes that arrived before it have been read;
//! a channel whose peer sent EOF still reads EOF. Writing after our own
//! shutdown is [`std::io::ErrorKind::BrokenPipe`].

use std::fmt;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;
use tracing::Instrument;

use super::driver::{self, Shared};
use super::frame::Role;
use super::state::Inner;
use super::ChanError;

/// Default per-channel window: bytes the peer may send before credit.
pub const DEFAULT_WINDOW: u32 = 256 * 1024;
/// Largest window [`Mux::start`] accepts (larger values are lowered).
pub const MAX_WINDOW: u32 = 1 << 30;

/// How a multiplexer behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MuxConfig {
    /// This end's role; the peer must have the other one.
    pub role: Role,
    /// Bytes the peer may send on each channel before it gets credit
    /// (1 to [`MAX_WINDOW`]; default [`DEFAULT_WINDOW`]). Each channel
    /// buffers at most this much unread data.
    pub window: u32,
    /// Channels the peer opened that wait for [`Incoming::accept`]; more
    /// are refused with a RESET (at least 1; default 128).
    pub accept_backlog: usize,
    /// Channels open at once, both ends' together; more are refused (at
    /// least 1; default 4096).
    pub max_channels: usize,
}

impl MuxConfig {
    /// The defaults for `role`.
    pub fn new(role: Role) -> MuxConfig {
        MuxConfig {
            role,
            window: DEFAULT_WINDOW,
            accept_backlog: 128,
            max_channels: 4096,
        }
    }

    fn clamped(self) -> MuxConfig {
        MuxConfig {
            window: self.window.clamp(1, MAX_WINDOW),
            accept_backlog: self.accept_backlog.max(1),
            max_channels: self.max_channels.max(1),
            ..self
        }
    }
}

/// Counters of a multiplexer, readable while it runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MuxStats {
    /// Channels in the table now (including opens in flight and channels
    /// dropped that still flush).
    pub channels_open: u64,
    /// Channels opened since the start, by either end.
    pub channels_total: u64,
    /// DATA payload bytes sent.
    pub bytes_sent: u64,
    /// DATA payload bytes received.
    pub bytes_received: u64,
    /// Frames sent (all kinds).
    pub frames_sent: u64,
    /// Frames received (all kinds).
    pub frames_received: u64,
    /// Channel RESETs sent.
    pub resets_sent: u64,
    /// Channel RESETs received.
    pub resets_received: u64,
}

/// Starts multiplexers.
#[derive(Debug)]
pub struct Mux(());

impl Mux {
    /// Starts a multiplexer over `io` (in production a
    /// [`crate::stream::VchanStream`]): sends our HELLO and spawns the one
    /// driver task that reads and writes `io` (see the module
    /// documentation of `driver.rs`, summarised in [`crate::chan`]).
    ///
    /// The driver runs while anything can still use the connection: a
    /// [`MuxHandle`] (or a clone), the [`Incoming`], a [`Channel`]. When
    /// the last of them is dropped it writes what is queued, shuts `io`
    /// down and ends; it also ends when the peer closes the stream or
    /// breaks the protocol. Out-of-range values in `config` are clamped.
    ///
    /// Must be called within a tokio runtime (it uses `tokio::spawn`).
    pub fn start<T>(io: T, config: MuxConfig) -> (MuxHandle, Incoming)
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        let config = config.clamped();
        let span = tracing::info_span!("chan_mux", role = %config.role);
        let shared = Arc::new(Shared::new(Inner::new(&config)));
        tokio::spawn(driver::run(io, shared.clone()).instrument(span));
        (
            MuxHandle {
                shared: shared.clone(),
            },
            Incoming { shared },
        )
    }
}

/// Opens channels and reads the multiplexer's state. Clones share the
/// multiplexer; it lives on while any clone, the [`Incoming`] or a
/// channel does.
pub struct MuxHandle {
    shared: Arc<Shared>,
}

impl MuxHandle {
    /// Opens a channel: sends OPEN and waits for the peer's OPEN_OK.
    ///
    /// Fails with [`ChanError::Reset`] when the peer refuses, with
    /// [`ChanError::TooManyChannels`] or [`ChanError::IdsExhausted`] at
    /// once, or with the connection's error once it has ended.
    ///
    /// Cancellation: dropping the future before it completes abandons the
    /// channel (the peer gets a RESET if it had accepted it).
    pub async fn open(&self) -> Result<Channel, ChanError> {
        let (tx, rx) = oneshot::channel();
        let id = self.shared.with(|inner, fx| inner.open(tx, fx))?;
        let mut guard = OpenGuard {
            shared: &self.shared,
            id,
            armed: true,
        };
        let res = rx.await;
        guard.armed = false;
        match res {
            Ok(Ok(())) => Ok(Channel {
                shared: self.shared.clone(),
                id,
            }),
            Ok(Err(e)) => Err(e),
            // The driver ended without answering (its end is recorded first).
            Err(_) => Err(self.error().unwrap_or(ChanError::Closed)),
        }
    }

    /// The counters now.
    pub fn stats(&self) -> MuxStats {
        self.shared.lock().stats()
    }

    /// Why the connection ended, if it ended other than in order.
    pub fn error(&self) -> Option<ChanError> {
        error_of(&self.shared)
    }

    /// Waits for the driver to end: `Ok` when the connection closed in
    /// order, else why it failed. Cancellation safe.
    pub async fn closed(&self) -> Result<(), ChanError> {
        let mut rx = self.shared.ended.subscribe();
        // The sender lives in `shared`, which we hold: this cannot fail.
        let _ = rx.wait_for(|ended| *ended).await;
        match error_of(&self.shared) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

fn error_of(shared: &Shared) -> Option<ChanError> {
    match &shared.lock().end {
        None | Some(ChanError::Closed) => None,
        Some(e) => Some(e.clone()),
    }
}

impl Clone for MuxHandle {
    fn clone(&self) -> MuxHandle {
        self.shared.lock().handles += 1;
        MuxHandle {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for MuxHandle {
    fn drop(&mut self) {
        self.shared.with(|inner, fx| {
            inner.handles -= 1;
            fx.kick = true;
        });
    }
}

impl fmt::Debug for MuxHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MuxHandle")
            .field("stats", &self.stats())
            .finish()
    }
}

/// Resets a channel whose open was abandoned.
struct OpenGuard<'a> {
    shared: &'a Shared,
    id: u32,
    armed: bool,
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.shared.with(|inner, fx| inner.cancel_open(self.id, fx));
        }
    }
}

/// The channels the peer opens. Dropping it refuses those not yet
/// accepted and all later ones.
pub struct Incoming {
    shared: Arc<Shared>,
}

impl Incoming {
    /// The next channel the peer opened (already answered with OPEN_OK),
    /// or `None` once the connection has ended. Cancellation safe.
    pub async fn accept(&mut self) -> Option<Channel> {
        let id = poll_fn(|cx| self.shared.with(|inner, _| inner.poll_accept(cx))).await?;
        Some(Channel {
            shared: self.shared.clone(),
            id,
        })
    }

    /// The counters now.
    pub fn stats(&self) -> MuxStats {
        self.shared.lock().stats()
    }

    /// Why the connection ended, if it ended other than in order.
    pub fn error(&self) -> Option<ChanError> {
        error_of(&self.shared)
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.shared.with(|inner, fx| inner.drop_incoming(fx));
    }
}

impl fmt::Debug for Incoming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Incoming").finish_non_exhaustive()
    }
}

/// One channel: a byte stream in each direction, with half close.
///
/// `poll_read` and `poll_write` move bytes only when they return `Ready`,
/// so `read` and `write` futures are cancellation safe. `poll_write`
/// buffers up to 64 KiB and returns at once; `poll_flush` waits until
/// every byte is framed for the driver; `poll_shutdown` until EOF is.
pub struct Channel {
    shared: Arc<Shared>,
    id: u32,
}

impl Channel {
    /// The channel id (odd: opened by the [`Role::Client`] end, even: by
    /// the server).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Bytes of memory the channel's unread data keeps allocated: at
    /// most its unread bytes (so its window) plus
    /// [`super::RX_MEMORY_OVERHEAD`], whatever the peer sends and however
    /// slowly the channel is read. 0 once the channel is gone.
    pub fn rx_memory(&self) -> usize {
        let id = self.id;
        self.shared.with(|inner, _| inner.rx_memory(id))
    }

    /// Aborts the channel: the peer's reads (after the bytes already sent)
    /// and writes fail with `reason` (cut to
    /// [`super::frame::MAX_REASON`] bytes). Unsent buffered bytes are
    /// dropped. Nothing is sent if both directions already ended or the
    /// peer reset the channel first.
    pub fn reset(self, reason: &str) {
        self.shared
            .with(|inner, fx| inner.reset_channel(self.id, reason, fx));
    }
}

impl AsyncRead for Channel {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let id = self.id;
        self.shared
            .with(|inner, fx| inner.poll_read(id, cx, buf, fx))
    }
}

impl AsyncWrite for Channel {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let id = self.id;
        self.shared
            .with(|inner, fx| inner.poll_write(id, cx, data, fx))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let id = self.id;
        self.shared.with(|inner, _| inner.poll_flush(id, cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let id = self.id;
        self.shared
            .with(|inner, fx| inner.poll_shutdown(id, cx, fx))
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        let id = self.id;
        self.shared.with(|inner, fx| inner.drop_channel(id, fx));
    }
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel").field("id", &self.id).finish()
    }
}
