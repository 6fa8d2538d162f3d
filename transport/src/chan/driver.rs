//! The one driver task of a multiplexer: a read loop and a write loop
//! polled together by one spawned task, over the state in `state.rs`.
//!
//! * The **read loop** reads the byte stream into a buffer, decodes every
//!   complete frame and applies it. It never waits on a channel: DATA goes
//!   into the channel's buffer (bounded by the window this end granted), so
//!   a channel whose reader is slow cannot hold up the others. The buffer
//!   is one allocation of `READ_BUFFER` bytes, reused once every payload
//!   sliced from it is gone, else replaced by another of the same size
//!   (what a channel's unread payloads may keep alive: `rxbuf.rs`).
//! * The **write loop** sleeps on a [`Notify`] until something is queued,
//!   takes a batch (control frames first, then DATA round robin across the
//!   ready channels within their send windows, EOFs after a channel's last
//!   byte), writes and flushes it.
//!
//! The two loops run in one task (`select!`) so that a blocked write never
//! stops reading (both ends writing into full buffers and neither reading
//! would deadlock). The task ends when either loop does:
//!
//! * the write loop finds nothing to send and nothing that could send
//!   again (no handle, no `Incoming`, no channel): it shuts the stream
//!   down and the connection ends in order ([`ChanError::Closed`]);
//! * the read loop reaches the end of the stream: in order if no channel
//!   was left unfinished, else [`ChanError::ConnectionLost`]. A write that
//!   fails because the peer stopped reading (broken pipe, reset) leads
//!   here too: the read loop then runs on alone to the end of the stream,
//!   so a peer's orderly close is not mistaken for a failure (the streams
//!   this serves end their read side when the peer has gone);
//! * an I/O error, or a fault of the peer's (a bad frame, a protocol
//!   violation): the peer is sent a connection RESET with the reason if the
//!   stream takes it at once, and every channel, opener and acceptor sees
//!   the error.
//!
//! Either way the stream is shut down and dropped when the task ends.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::BytesMut;
use futures::FutureExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{watch, Notify};

use super::entry::Effects;
use super::frame::{self, Frame, CONNECTION, MAX_PAYLOAD};
use super::rxbuf::{READ_BUFFER, READ_CHUNK};
use super::state::{Inner, BATCH};
use super::ChanError;

/// What the driver, the handles and the channels share.
#[derive(Debug)]
pub(super) struct Shared {
    inner: Mutex<Inner>,
    /// Wakes the write loop (a stored permit if it is not waiting).
    kick: Notify,
    /// Becomes true when the driver has ended (`Inner::end` says why).
    pub(super) ended: watch::Sender<bool>,
}

impl Shared {
    pub(super) fn new(inner: Inner) -> Shared {
        Shared {
            inner: Mutex::new(inner),
            kick: Notify::new(),
            ended: watch::Sender::new(false),
        }
    }

    /// The state, also after a panic elsewhere (the state stays
    /// consistent: every method completes its changes before returning).
    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the state under the lock, then, unlocked, wakes the
    /// driver if `f` asked for it and delivers the collected wakeups.
    pub(super) fn with<R>(&self, f: impl FnOnce(&mut Inner, &mut Effects) -> R) -> R {
        let mut fx = Effects::default();
        let r = f(&mut self.lock(), &mut fx);
        if fx.kick {
            self.kick.notify_one();
        }
        fx.deliver();
        r
    }
}

/// The loop that ended first, and how.
enum First {
    Write(Result<(), ChanError>),
    Read(Result<(), ChanError>),
}

enum Stop {
    /// The write loop: nothing left that could use the connection.
    Idle,
    /// The read loop: the stream ended.
    PeerClosed,
}

/// The driver task's body.
pub(super) async fn run<T>(io: T, shared: Arc<Shared>)
where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut r, mut w) = tokio::io::split(io);
    tracing::debug!("chan mux: driver started");
    // True while a batch is partly written: then nothing else may be
    // written (it would land inside a frame).
    let mid_batch = AtomicBool::new(false);
    // Outside the read loop's future, so that the loop can be resumed.
    let mut inbuf = BytesMut::with_capacity(READ_BUFFER);
    let first = tokio::select! {
        // The write loop first, so that our HELLO is on its way before the
        // peer's is judged.
        biased;
        res = write_loop(&mut w, &shared, &mid_batch) => First::Write(res),
        res = read_loop(&mut r, &mut inbuf, &shared) => First::Read(res),
    };
    let outcome = match first {
        First::Write(Err(ChanError::Io(e))) if peer_gone(e.kind()) => {
            // The peer stopped reading: it closed or died. What it sent
            // before says which (the end of the stream with every channel
            // finished is an orderly close), so read on to the end.
            // `read_buf` is cancellation safe: the select lost nothing.
            tracing::debug!("chan mux: writing failed ({e}); reading to the end");
            read_loop(&mut r, &mut inbuf, &shared)
                .await
                .map(|()| Stop::PeerClosed)
        }
        First::Write(res) => res.map(|()| Stop::Idle),
        First::Read(res) => res.map(|()| Stop::PeerClosed),
    };
    let end = match outcome {
        Ok(Stop::Idle) => ChanError::Closed,
        Ok(Stop::PeerClosed) => match shared.lock().unfinished() {
            0 => ChanError::Closed,
            open => ChanError::ConnectionLost { open },
        },
        Err(e) => e,
    };
    if end.is_peer_fault() && !mid_batch.load(Ordering::Relaxed) {
        // Tell the peer why, after the control frames not yet written (our
        // HELLO among them if the peer was judged before it went out).
        // Best effort, never waiting: the peer may not be reading.
        let mut bye = shared.with(|inner, _| inner.take_ctl());
        if Frame::reset(CONNECTION, &end.to_string())
            .encode(&mut bye)
            .is_ok()
        {
            let _ = w.write_all(&bye).now_or_never();
        }
    }
    let stats = shared.with(|inner, fx| {
        inner.finish(end.clone(), fx);
        inner.stats()
    });
    match &end {
        ChanError::Closed => tracing::info!(?stats, "chan mux: connection closed"),
        e => tracing::warn!(?stats, "chan mux: connection ended: {e}"),
    }
    shared.ended.send_replace(true);
    let _ = w.shutdown().now_or_never();
}

/// Write errors that mean the peer no longer reads.
fn peer_gone(kind: io::ErrorKind) -> bool {
    use io::ErrorKind::*;
    matches!(
        kind,
        BrokenPipe | ConnectionReset | ConnectionAborted | NotConnected
    )
}

async fn read_loop<R>(r: &mut R, buf: &mut BytesMut, shared: &Shared) -> Result<(), ChanError>
where
    R: AsyncRead + Unpin,
{
    loop {
        while let Some(frame) = frame::decode(buf)? {
            tracing::trace!(channel = frame.channel(), kind = %frame.kind(), "chan mux: frame in");
            shared.with(|inner, fx| inner.on_frame(frame, fx))?;
        }
        if buf.capacity() - buf.len() < READ_CHUNK / 4 && !buf.try_reclaim(READ_CHUNK) {
            // Payloads still point into this allocation: start another of
            // the same size, never a larger one (each zero-copy payload is
            // charged READ_BUFFER for the allocation it keeps alive; see
            // `rxbuf.rs`). What is left is less than a frame, so it fits.
            let mut fresh = BytesMut::with_capacity(READ_BUFFER);
            fresh.extend_from_slice(buf);
            *buf = fresh;
        }
        // One unit of tokio's budget per read: a stream that is always
        // ready (the peer writing at full speed) must not keep the write
        // loop, polled by the same task, from sending our credits.
        tokio::task::coop::consume_budget().await;
        if r.read_buf(buf).await? == 0 {
            // Complete frames were all taken above: any byte left is a
            // frame cut short.
            frame::decode_eof(buf)?;
            return Ok(());
        }
    }
}

async fn write_loop<W>(w: &mut W, shared: &Shared, mid_batch: &AtomicBool) -> Result<(), ChanError>
where
    W: AsyncWrite + Unpin,
{
    let mut out = BytesMut::with_capacity(BATCH + MAX_PAYLOAD + frame::HEADER_SIZE);
    loop {
        let idle = shared.with(|inner, fx| {
            inner.fill_output(&mut out, fx);
            out.is_empty() && inner.idle()
        });
        if !out.is_empty() {
            mid_batch.store(true, Ordering::Relaxed);
            w.write_all(&out).await?;
            w.flush().await?;
            mid_batch.store(false, Ordering::Relaxed);
            out.clear();
            // The same the other way: a sink that is always ready must not
            // starve the read loop.
            tokio::task::coop::consume_budget().await;
            continue;
        }
        if idle {
            w.shutdown().await?;
            return Ok(());
        }
        shared.kick.notified().await;
    }
}
