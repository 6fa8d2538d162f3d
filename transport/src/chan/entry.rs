//! One channel's entry in the multiplexer's table ([`ChanState`]), the
//! helpers the state machine in `state.rs` applies to it, and [`Effects`],
//! the wakeups collected under the lock and delivered after it.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::task::Waker;

use bytes::BytesMut;
use tokio::sync::oneshot;

use super::frame::{Frame, Kind};
use super::rxbuf::RxQueue;
use super::ChanError;

/// The answer an opener waits for.
pub(super) type OpenResult = Result<(), ChanError>;

/// What to do once the lock is released.
#[derive(Debug, Default)]
pub(super) struct Effects {
    pub(super) wake: Vec<Waker>,
    pub(super) opens: Vec<(oneshot::Sender<OpenResult>, OpenResult)>,
    /// The driver has frames to write (or a change of state to look at).
    pub(super) kick: bool,
}

impl Effects {
    /// Wakes the collected tasks and answers the openers (call unlocked).
    pub(super) fn deliver(&mut self) {
        for w in self.wake.drain(..) {
            w.wake();
        }
        for (tx, res) in self.opens.drain(..) {
            // A dropped receiver is an open that was cancelled: its guard
            // resets the channel.
            let _ = tx.send(res);
        }
    }

    pub(super) fn wake(&mut self, w: &mut Option<Waker>) {
        if let Some(w) = w.take() {
            self.wake.push(w);
        }
    }
}

/// Appends a frame this module built (always valid: [`Frame::reset`] cuts
/// reasons, credits and windows are never 0).
pub(super) fn encode_valid(dst: &mut BytesMut, f: Frame) {
    if let Err(e) = f.encode(dst) {
        tracing::error!("chan mux: could not encode {:?}: {e}", f.kind());
        debug_assert!(false, "invalid frame built: {e}");
    }
}

/// One channel as the multiplexer sees it.
#[derive(Debug)]
pub(super) struct ChanState {
    // Receive direction. Invariant (until EOF/RESET): rx_allowed +
    // rx.len() + credit_owed == our window.
    pub(super) rx: RxQueue,
    /// Bytes the peer may still send before our next CREDIT.
    pub(super) rx_allowed: u64,
    /// Bytes the reader consumed that have not been credited back.
    pub(super) credit_owed: u64,
    pub(super) rx_eof: bool,
    // Send direction.
    pub(super) tx: BytesMut,
    /// Bytes we may still send: the peer's window less what we sent, plus
    /// its credits.
    pub(super) send_window: u64,
    /// The writer called `poll_shutdown`: EOF follows the buffered bytes.
    pub(super) shutdown: bool,
    pub(super) eof_sent: bool,
    /// In `Inner::ready`.
    pub(super) queued: bool,
    // Both.
    pub(super) peer_reset: Option<String>,
    /// The `Channel` was dropped after `poll_shutdown`; the buffered bytes
    /// and EOF still go out, then the entry is removed.
    pub(super) detached: bool,
    /// Our OPEN waits for OPEN_OK (or RESET).
    pub(super) opening: Option<oneshot::Sender<OpenResult>>,
    pub(super) read_waker: Option<Waker>,
    pub(super) write_waker: Option<Waker>,
}

impl ChanState {
    pub(super) fn new(window: u32, send_window: u64) -> ChanState {
        ChanState {
            rx: RxQueue::default(),
            rx_allowed: u64::from(window),
            credit_owed: 0,
            rx_eof: false,
            tx: BytesMut::new(),
            send_window,
            shutdown: false,
            eof_sent: false,
            queued: false,
            peer_reset: None,
            detached: false,
            opening: None,
            read_waker: None,
            write_waker: None,
        }
    }

    /// Whether the driver can send something for this channel now.
    pub(super) fn wants_send(&self) -> bool {
        self.opening.is_none()
            && self.peer_reset.is_none()
            && if self.tx.is_empty() {
                self.shutdown && !self.eof_sent
            } else {
                self.send_window > 0
            }
    }

    /// Both directions ended in order.
    pub(super) fn finished(&self) -> bool {
        self.eof_sent && self.rx_eof
    }

    pub(super) fn reset_error(&self, id: u32) -> Option<io::Error> {
        self.peer_reset.as_ref().map(|reason| {
            ChanError::Reset {
                channel: id,
                reason: reason.clone(),
            }
            .to_io()
        })
    }
}

/// Puts a channel on the ready list if it has something to send.
pub(super) fn schedule(ready: &mut VecDeque<u32>, id: u32, st: &mut ChanState, fx: &mut Effects) {
    if !st.queued && st.wants_send() {
        st.queued = true;
        ready.push_back(id);
        fx.kick = true;
    }
}

pub(super) fn violation(channel: u32, reason: impl Into<String>) -> ChanError {
    ChanError::Protocol {
        channel,
        reason: reason.into(),
    }
}

/// The entry a DATA, CREDIT or EOF frame is for: `None` for a channel this
/// end already closed (the frame was in flight), an error for an id never
/// opened or a channel in the wrong state.
pub(super) fn channel_for(
    chans: &mut HashMap<u32, ChanState>,
    past: bool,
    id: u32,
    kind: Kind,
) -> Result<Option<&mut ChanState>, ChanError> {
    match chans.get_mut(&id) {
        None if past => Ok(None),
        None => Err(violation(id, format!("{kind} for a channel never opened"))),
        Some(st) if st.opening.is_some() => Err(violation(id, format!("{kind} before OPEN_OK"))),
        Some(st) if st.peer_reset.is_some() => {
            Err(violation(id, format!("{kind} after the peer's RESET")))
        }
        Some(st) => Ok(Some(st)),
    }
}
