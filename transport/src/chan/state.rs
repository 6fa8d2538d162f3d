//! The multiplexer's state: the channel table, per-channel buffers and
//! windows, and the frames waiting to go out. No I/O and no clock: the
//! driver feeds it decoded frames ([`Inner::on_frame`]) and asks it for
//! bytes to write ([`Inner::fill_output`]); the [`super::Channel`] poll
//! methods call the `poll_*` methods here. Everything runs under the one
//! lock in `driver::Shared`; wakers and open results are collected in
//! [`Effects`] and delivered after the lock is released.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::ReadBuf;
use tokio::sync::oneshot;

use super::entry::{
    channel_for, encode_valid, schedule, violation, ChanState, Effects, OpenResult,
};
use super::frame::{put_header, Frame, Kind, Role, CONNECTION, MAX_PAYLOAD};
use super::{ChanError, MuxConfig, MuxStats};

/// Bytes a channel's writer may buffer locally before `poll_write` waits.
pub(super) const TX_BUFFER: usize = 64 * 1024;
/// The write loop stops adding DATA frames to a batch beyond this size.
pub(super) const BATCH: usize = 256 * 1024;
/// Control frames (answers to the peer's frames, credits) that may wait
/// unwritten; beyond this the peer is sending requests without reading
/// the answers, and the connection ends rather than grow the queue.
const MAX_CTL: usize = 1 << 20;

/// The whole multiplexer state (behind one lock).
#[derive(Debug)]
pub(super) struct Inner {
    role: Role,
    window: u32,
    backlog: usize,
    max_channels: usize,
    chans: HashMap<u32, ChanState>,
    /// Encoded control frames (all but DATA, EOF and a RESET that must
    /// follow a channel's EOF), in the order they were queued.
    ctl: BytesMut,
    /// Channels with something to send, served round robin.
    ready: VecDeque<u32>,
    /// Our next channel id (steps by 2; beyond u32::MAX: exhausted).
    next_id: u64,
    /// The highest id the peer opened (0: none yet).
    max_peer_id: u32,
    /// The peer's initial window, from its HELLO (None: no HELLO yet).
    peer_window: Option<u32>,
    /// Set once the driver has ended; [`ChanError::Closed`] for an orderly end.
    pub(super) end: Option<ChanError>,
    /// Live `MuxHandle`s.
    pub(super) handles: usize,
    incoming_alive: bool,
    accept_q: VecDeque<u32>,
    accept_waker: Option<Waker>,
    stats: MuxStats,
}

impl Inner {
    /// A fresh state with our HELLO queued.
    pub(super) fn new(cfg: &MuxConfig) -> Inner {
        let mut inner = Inner {
            role: cfg.role,
            window: cfg.window,
            backlog: cfg.accept_backlog,
            max_channels: cfg.max_channels,
            chans: HashMap::new(),
            ctl: BytesMut::new(),
            ready: VecDeque::new(),
            next_id: u64::from(cfg.role.first_id()),
            max_peer_id: 0,
            peer_window: None,
            end: None,
            handles: 1,
            incoming_alive: true,
            accept_q: VecDeque::new(),
            accept_waker: None,
            stats: MuxStats::default(),
        };
        inner.push_ctl(Frame::Hello(super::frame::Hello {
            role: cfg.role,
            window: cfg.window,
        }));
        inner
    }

    fn push_ctl(&mut self, f: Frame) {
        self.stats.frames_sent += 1;
        encode_valid(&mut self.ctl, f);
    }

    /// Whether `id` was opened (or refused) before, by either end.
    fn known_past(&self, id: u32) -> bool {
        if self.role.owns(id) {
            u64::from(id) < self.next_id
        } else {
            id <= self.max_peer_id
        }
    }

    /// Nothing can use the connection any more and nothing is left to send.
    pub(super) fn idle(&self) -> bool {
        self.handles == 0 && !self.incoming_alive && self.chans.is_empty() && self.ctl.is_empty()
    }

    /// Channels that have not ended in order (for the end-of-stream verdict).
    pub(super) fn unfinished(&self) -> usize {
        self.chans
            .values()
            .filter(|st| st.peer_reset.is_none() && !st.finished())
            .count()
    }

    /// A snapshot of the counters.
    pub(super) fn stats(&self) -> MuxStats {
        MuxStats {
            channels_open: self.chans.len() as u64,
            ..self.stats
        }
    }

    // ---- frames from the peer ----

    /// Applies one frame from the peer. An error ends the connection.
    pub(super) fn on_frame(&mut self, frame: Frame, fx: &mut Effects) -> Result<(), ChanError> {
        self.stats.frames_received += 1;
        self.apply(frame, fx)?;
        if self.ctl.len() > MAX_CTL {
            return Err(violation(
                CONNECTION,
                format!(
                    "{} bytes of answers wait unwritten: the peer does not read them",
                    self.ctl.len()
                ),
            ));
        }
        Ok(())
    }

    fn apply(&mut self, frame: Frame, fx: &mut Effects) -> Result<(), ChanError> {
        let Some(peer_window) = self.peer_window else {
            return match frame {
                Frame::Hello(h) if h.role == self.role => Err(ChanError::SameRole { role: h.role }),
                Frame::Hello(h) => {
                    tracing::debug!(peer_window = h.window, "chan mux: peer's HELLO");
                    self.peer_window = Some(h.window);
                    Ok(())
                }
                Frame::Reset {
                    channel: CONNECTION,
                    reason,
                } => Err(ChanError::PeerAborted { reason }),
                other => Err(violation(
                    other.channel(),
                    format!("{} before HELLO", other.kind()),
                )),
            };
        };
        match frame {
            Frame::Hello(_) => Err(violation(CONNECTION, "a second HELLO")),
            Frame::Reset {
                channel: CONNECTION,
                reason,
            } => Err(ChanError::PeerAborted { reason }),
            Frame::Open(id) => self.on_open(id, peer_window, fx),
            Frame::OpenOk(id) => self.on_open_ok(id, peer_window, fx),
            Frame::Data { channel, payload } => self.on_data(channel, payload, fx),
            Frame::Credit { channel, increment } => self.on_credit(channel, increment, fx),
            Frame::Eof(id) => self.on_eof(id, fx),
            Frame::Reset { channel, reason } => self.on_reset(channel, reason, fx),
        }
    }

    fn on_open(&mut self, id: u32, peer_window: u32, fx: &mut Effects) -> Result<(), ChanError> {
        if self.role.owns(id) {
            return Err(violation(id, "OPEN of an id of this end's parity"));
        }
        if id <= self.max_peer_id {
            return Err(violation(
                id,
                format!("OPEN of an id not above the last ({})", self.max_peer_id),
            ));
        }
        self.max_peer_id = id;
        let refuse = if !self.incoming_alive {
            Some("not accepting channels")
        } else if self.accept_q.len() >= self.backlog {
            Some("accept backlog full")
        } else if self.chans.len() >= self.max_channels {
            Some("too many channels")
        } else {
            None
        };
        fx.kick = true;
        if let Some(reason) = refuse {
            tracing::warn!(
                channel = id,
                "chan mux: refused the peer's channel: {reason}"
            );
            self.push_ctl(Frame::reset(id, reason));
            return Ok(());
        }
        tracing::debug!(channel = id, "chan mux: the peer opened a channel");
        self.chans
            .insert(id, ChanState::new(self.window, u64::from(peer_window)));
        self.push_ctl(Frame::OpenOk(id));
        self.stats.channels_total += 1;
        self.accept_q.push_back(id);
        fx.wake(&mut self.accept_waker);
        Ok(())
    }

    fn on_open_ok(&mut self, id: u32, peer_window: u32, fx: &mut Effects) -> Result<(), ChanError> {
        if !self.role.owns(id) {
            return Err(violation(id, "OPEN_OK for a channel the peer opened"));
        }
        let past = self.known_past(id);
        match self.chans.get_mut(&id) {
            None if past => Ok(()), // the open was cancelled
            None => Err(violation(id, "OPEN_OK for a channel never opened")),
            Some(st) => match st.opening.take() {
                Some(tx) => {
                    tracing::debug!(channel = id, "chan mux: channel open");
                    st.send_window = u64::from(peer_window);
                    self.stats.channels_total += 1;
                    fx.opens.push((tx, Ok(())));
                    Ok(())
                }
                None => Err(violation(id, "a second OPEN_OK")),
            },
        }
    }

    fn on_data(&mut self, id: u32, payload: Bytes, fx: &mut Effects) -> Result<(), ChanError> {
        let len = payload.len();
        self.stats.bytes_received += len as u64;
        let past = self.known_past(id);
        let Some(st) = channel_for(&mut self.chans, past, id, Kind::Data)? else {
            return Ok(());
        };
        if st.rx_eof {
            return Err(violation(id, "DATA after EOF"));
        }
        if len as u64 > st.rx_allowed {
            return Err(violation(
                id,
                format!(
                    "DATA of {len} bytes beyond the window ({} bytes left)",
                    st.rx_allowed
                ),
            ));
        }
        st.rx_allowed -= len as u64;
        if st.detached {
            return Ok(()); // nobody will read it; a RESET follows our EOF
        }
        st.rx.push(payload);
        fx.wake(&mut st.read_waker);
        Ok(())
    }

    fn on_credit(&mut self, id: u32, inc: u32, fx: &mut Effects) -> Result<(), ChanError> {
        let past = self.known_past(id);
        let Some(st) = channel_for(&mut self.chans, past, id, Kind::Credit)? else {
            return Ok(());
        };
        let window = st.send_window + u64::from(inc);
        if window > u64::from(u32::MAX) {
            return Err(violation(
                id,
                format!("CREDIT of {inc} overflows the window ({})", st.send_window),
            ));
        }
        st.send_window = window;
        schedule(&mut self.ready, id, st, fx);
        Ok(())
    }

    fn on_eof(&mut self, id: u32, fx: &mut Effects) -> Result<(), ChanError> {
        let past = self.known_past(id);
        let Some(st) = channel_for(&mut self.chans, past, id, Kind::Eof)? else {
            return Ok(());
        };
        if st.rx_eof {
            return Err(violation(id, "a second EOF"));
        }
        tracing::debug!(channel = id, "chan mux: the peer's EOF");
        st.rx_eof = true;
        fx.wake(&mut st.read_waker);
        Ok(())
    }

    fn on_reset(&mut self, id: u32, reason: String, fx: &mut Effects) -> Result<(), ChanError> {
        let past = self.known_past(id);
        let Some(st) = self.chans.get_mut(&id) else {
            return match past {
                true => Ok(()),
                false => Err(violation(id, "RESET for a channel never opened")),
            };
        };
        tracing::debug!(channel = id, "chan mux: reset by the peer: {reason}");
        self.stats.resets_received += 1;
        if let Some(tx) = st.opening.take() {
            fx.opens.push((
                tx,
                Err(ChanError::Reset {
                    channel: id,
                    reason,
                }),
            ));
            self.chans.remove(&id);
            return Ok(());
        }
        if st.detached {
            self.chans.remove(&id);
            return Ok(());
        }
        if st.peer_reset.is_none() {
            st.peer_reset = Some(reason);
            st.tx.clear();
            fx.wake(&mut st.read_waker);
            fx.wake(&mut st.write_waker);
        }
        Ok(())
    }

    // ---- output ----

    /// Moves queued control frames, then DATA (round robin, within each
    /// channel's send window), EOFs and the RESETs that follow them into
    /// `out`, up to about [`BATCH`] bytes.
    pub(super) fn fill_output(&mut self, out: &mut BytesMut, fx: &mut Effects) {
        if self.end.is_some() {
            return;
        }
        out.extend_from_slice(&self.ctl);
        self.ctl.clear();
        while out.len() < BATCH {
            let Some(id) = self.ready.pop_front() else {
                break;
            };
            let Some(st) = self.chans.get_mut(&id) else {
                continue;
            };
            st.queued = false;
            if !st.wants_send() {
                continue;
            }
            let n = st
                .tx
                .len()
                .min(MAX_PAYLOAD)
                .min(usize::try_from(st.send_window).unwrap_or(usize::MAX));
            if n > 0 {
                put_header(out, id, Kind::Data, n as u32);
                out.extend_from_slice(&st.tx[..n]);
                st.tx.advance(n);
                st.send_window -= n as u64;
                self.stats.bytes_sent += n as u64;
                self.stats.frames_sent += 1;
                fx.wake(&mut st.write_waker);
            }
            if st.tx.is_empty() && st.shutdown && !st.eof_sent {
                put_header(out, id, Kind::Eof, 0);
                self.stats.frames_sent += 1;
                st.eof_sent = true;
                fx.wake(&mut st.write_waker);
                if st.detached {
                    if !st.rx_eof {
                        let reason = "channel closed before the peer's EOF";
                        encode_valid(out, Frame::reset(id, reason));
                        self.stats.frames_sent += 1;
                        self.stats.resets_sent += 1;
                    }
                    self.chans.remove(&id);
                    continue;
                }
            }
            schedule(&mut self.ready, id, st, fx);
        }
    }

    /// The control frames not yet handed to the write loop.
    pub(super) fn take_ctl(&mut self) -> BytesMut {
        std::mem::take(&mut self.ctl)
    }

    // ---- the application's side ----

    /// Allocates an id and queues OPEN; `tx` gets OPEN_OK's answer.
    pub(super) fn open(
        &mut self,
        tx: oneshot::Sender<OpenResult>,
        fx: &mut Effects,
    ) -> Result<u32, ChanError> {
        if let Some(e) = &self.end {
            return Err(e.clone());
        }
        if self.chans.len() >= self.max_channels {
            return Err(ChanError::TooManyChannels {
                max: self.max_channels,
            });
        }
        let id = u32::try_from(self.next_id).map_err(|_| ChanError::IdsExhausted)?;
        self.next_id += 2;
        let mut st = ChanState::new(self.window, 0);
        st.opening = Some(tx);
        self.chans.insert(id, st);
        self.push_ctl(Frame::Open(id));
        fx.kick = true;
        Ok(id)
    }

    /// An open whose future was dropped: forget the channel, tell the peer.
    pub(super) fn cancel_open(&mut self, id: u32, fx: &mut Effects) {
        self.reset_channel(id, "open cancelled", fx);
    }

    pub(super) fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<Option<u32>> {
        if let Some(id) = self.accept_q.pop_front() {
            return Poll::Ready(Some(id));
        }
        if self.end.is_some() {
            return Poll::Ready(None);
        }
        self.accept_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// The `Incoming` is gone: refuse what is queued and what comes.
    pub(super) fn drop_incoming(&mut self, fx: &mut Effects) {
        self.incoming_alive = false;
        for id in std::mem::take(&mut self.accept_q) {
            self.reset_channel(id, "channel not accepted", fx);
        }
        fx.kick = true;
    }

    pub(super) fn poll_read(
        &mut self,
        id: u32,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
        fx: &mut Effects,
    ) -> Poll<io::Result<()>> {
        let threshold = u64::from((self.window / 4).max(1));
        let Some(st) = self.chans.get_mut(&id) else {
            return Poll::Ready(Err(gone(id)));
        };
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if st.rx.len() > 0 {
            let n = st.rx.read_into(buf);
            st.credit_owed += n as u64;
            let open = !st.rx_eof && st.peer_reset.is_none() && self.end.is_none();
            if open && st.credit_owed >= threshold {
                let increment = u32::try_from(st.credit_owed).unwrap_or(u32::MAX);
                st.credit_owed -= u64::from(increment);
                st.rx_allowed += u64::from(increment);
                self.stats.frames_sent += 1;
                encode_valid(
                    &mut self.ctl,
                    Frame::Credit {
                        channel: id,
                        increment,
                    },
                );
                fx.kick = true;
            }
            return Poll::Ready(Ok(()));
        }
        if st.rx_eof {
            return Poll::Ready(Ok(()));
        }
        if let Some(e) = st.reset_error(id) {
            return Poll::Ready(Err(e));
        }
        if let Some(e) = &self.end {
            return Poll::Ready(Err(e.to_io()));
        }
        st.read_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Memory kept by channel `id`'s unread data (0 if it is gone).
    pub(super) fn rx_memory(&self, id: u32) -> usize {
        self.chans.get(&id).map_or(0, |st| st.rx.held())
    }

    pub(super) fn poll_write(
        &mut self,
        id: u32,
        cx: &mut Context<'_>,
        data: &[u8],
        fx: &mut Effects,
    ) -> Poll<io::Result<usize>> {
        let Some(st) = self.chans.get_mut(&id) else {
            return Poll::Ready(Err(gone(id)));
        };
        if let Some(e) = st.reset_error(id) {
            return Poll::Ready(Err(e));
        }
        if let Some(e) = &self.end {
            return Poll::Ready(Err(e.to_io()));
        }
        if st.shutdown {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                format!("chan {id}: write after shutdown"),
            )));
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let room = TX_BUFFER.saturating_sub(st.tx.len());
        if room == 0 {
            st.write_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = room.min(data.len());
        st.tx.extend_from_slice(&data[..n]);
        schedule(&mut self.ready, id, st, fx);
        Poll::Ready(Ok(n))
    }

    /// Ready once every written byte has been framed for the driver.
    pub(super) fn poll_flush(&mut self, id: u32, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(st) = self.chans.get_mut(&id) else {
            return Poll::Ready(Err(gone(id)));
        };
        if st.tx.is_empty() {
            return Poll::Ready(Ok(()));
        }
        if let Some(e) = st.reset_error(id) {
            return Poll::Ready(Err(e));
        }
        if let Some(e) = &self.end {
            return Poll::Ready(Err(e.to_io()));
        }
        st.write_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Queues EOF after the buffered bytes; ready once it is framed.
    pub(super) fn poll_shutdown(
        &mut self,
        id: u32,
        cx: &mut Context<'_>,
        fx: &mut Effects,
    ) -> Poll<io::Result<()>> {
        let Some(st) = self.chans.get_mut(&id) else {
            return Poll::Ready(Err(gone(id)));
        };
        if st.eof_sent {
            return Poll::Ready(Ok(()));
        }
        if let Some(e) = st.reset_error(id) {
            return Poll::Ready(Err(e));
        }
        if let Some(e) = &self.end {
            return Poll::Ready(Err(e.to_io()));
        }
        st.shutdown = true;
        schedule(&mut self.ready, id, st, fx);
        st.write_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// The `Channel` was dropped (see the module documentation of
    /// [`super::mux`] for what the peer sees).
    pub(super) fn drop_channel(&mut self, id: u32, fx: &mut Effects) {
        // Removing the last channel may leave the driver nothing to do.
        fx.kick = true;
        let Some(st) = self.chans.get_mut(&id) else {
            return;
        };
        if self.end.is_some() || st.peer_reset.is_some() || st.finished() {
            self.chans.remove(&id);
        } else if st.shutdown && !st.eof_sent {
            st.detached = true;
            st.rx.clear();
            schedule(&mut self.ready, id, st, fx);
        } else if st.shutdown {
            self.reset_channel(id, "channel closed before the peer's EOF", fx);
        } else {
            self.reset_channel(id, "channel dropped before shutdown", fx);
        }
    }

    /// Forgets the channel and sends RESET unless the peer already reset
    /// it or both directions ended.
    pub(super) fn reset_channel(&mut self, id: u32, reason: &str, fx: &mut Effects) {
        let Some(st) = self.chans.remove(&id) else {
            return;
        };
        fx.kick = true;
        if self.end.is_none() && st.peer_reset.is_none() && !st.finished() {
            tracing::debug!(channel = id, "chan mux: resetting the channel: {reason}");
            self.stats.resets_sent += 1;
            self.push_ctl(Frame::reset(id, reason));
        }
    }

    /// The driver ended with `e` ([`ChanError::Closed`]: in order). Every
    /// waiting task is woken and sees it; openers get it as their answer.
    pub(super) fn finish(&mut self, e: ChanError, fx: &mut Effects) {
        if self.end.is_some() {
            return;
        }
        let opening: Vec<u32> = self
            .chans
            .iter()
            .filter(|(_, st)| st.opening.is_some())
            .map(|(id, _)| *id)
            .collect();
        for id in opening {
            if let Some(tx) = self.chans.remove(&id).and_then(|st| st.opening) {
                fx.opens.push((tx, Err(e.clone())));
            }
        }
        for st in self.chans.values_mut() {
            fx.wake(&mut st.read_waker);
            fx.wake(&mut st.write_waker);
        }
        fx.wake(&mut self.accept_waker);
        self.ctl.clear();
        self.ready.clear();
        self.end = Some(e);
    }
}

fn gone(id: u32) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        format!("chan {id}: the channel is gone"),
    )
}
