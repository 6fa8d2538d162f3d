//! The XenBus device state machines, sans-IO: one for a backend device and
//! one for a frontend device. A daemon feeds them [`Input`]s (the other
//! end's state as read from XenStore, what the device did, what the
//! toolstack or the operator asked for) and carries out the [`Action`]s they
//! return, in order. No tokio, no clock, no XenStore in here.
//!
//! # Level-triggered
//!
//! XenStore watches coalesce: a peer that writes `Closed` then
//! `Initialising` quickly may be seen only as `Initialising`. So no decision
//! here depends on having seen a transition: after every input the machine
//! looks at (its phase, the peer's *current* state) and acts on that. Each
//! rule below is written so that skipping any intermediate peer state leads
//! to the same end.
//!
//! # The handshake, with a backend restart
//!
//! ```text
//!   frontend (F)                               backend (B)
//!   Initialising ---------------------------->  (sees F Initialising)
//!                                               publish features; InitWait
//!   (sees B InitWait)  <-----------------------
//!   share rings, write ring-ref,
//!   event-channel...; Initialised ----------->  (sees F Initialised)
//!                                               map rings; Connected
//!   (sees B Connected) <-----------------------
//!   Connected             ... traffic ...
//!
//!   backend daemon killed: the ring reports the peer gone
//!   tear down; Initialising                     (state node still says 4)
//!
//!   backend daemon restarted: sees F Initialising (not stale)
//!                                  <---------   publish features; InitWait
//!   share again; Initialised ... as above ...
//!
//!   restarted before F noticed: sees F Connected (stale, from the last
//!   backend): writes Closed and waits for F to leave Initialised/Connected
//!   (sees B Closed) tear down; Closing; Closed;
//!   Initialising ----------------------------->  publish features; InitWait
//! ```
//!
//! Closing: either side's `Closing` makes the other tear down and answer
//! `Closing` then `Closed` (frontend) or `Closed` (backend). A frontend
//! that has closed becomes `Initialising` again at once ("ready for a
//! backend"); a backend that has closed goes back to `InitWait` when its
//! device is online and the frontend is `Initialising`. A device that
//! failed (an error node was written) stays closed until the other end has
//! moved (a backend: until the frontend starts over with `Initialising`; a
//! frontend: until the backend's state changes), so a permanent error does
//! not turn into a retry loop; the error node is removed once it connects.
//!
//! `Reconfiguring` and `Reconfigured` are accepted from the peer and
//! change nothing.

use crate::abi::xenbus::XenbusState;

/// What happened, fed to a machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The device task starts (fresh, or a daemon re-attaching after a
    /// restart); `peer` is the other end's state read now.
    Start {
        /// The other end's current state (`Unknown` if absent).
        peer: XenbusState,
    },
    /// The other end's state, as read after a watch fired (repeats are
    /// harmless).
    Peer(XenbusState),
    /// The device is ready: a backend has mapped what the frontend offered;
    /// a frontend has shared its rings and has keys to publish.
    Ready,
    /// The device's connection ended because the peer went away (its
    /// process died, or it closed the ring).
    Ended,
    /// The device failed; the message goes to the error node.
    Failed(String),
    /// The toolstack took the device offline (backend `online` = 0).
    Offline,
    /// The daemon is shutting down.
    Shutdown,
    /// This end's XenStore directory is gone (the device was removed).
    Removed,
    /// The peer's domain is gone (backend only: @releaseDomain and the
    /// frontend domain is no longer introduced).
    PeerGone,
}

/// What the daemon must do, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Backend: write the device's features into its directory.
    PublishFeatures,
    /// Frontend: write the keys the device produced (ring-ref, ...).
    PublishKeys,
    /// Write this end's `state` node.
    Switch(XenbusState),
    /// Start the device's connection (backend: map what the frontend
    /// offered; frontend: share rings). It reports [`Input::Ready`],
    /// [`Input::Ended`] or [`Input::Failed`].
    StartDevice,
    /// Tell the device it is connected (its `ready()` returns).
    Activate,
    /// Stop the device's connection and release what it holds.
    StopDevice,
    /// Write the error node with this message.
    WriteError(String),
    /// Remove the error node this end wrote earlier (it connected since).
    ClearError,
    /// Backend: remove the device's backend directory (its frontend domain
    /// is gone, as a toolstack would on domain destruction).
    RemoveNodes,
    /// The device task is finished.
    Exit,
}

/// Where a machine is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Not started.
    Idle,
    /// Backend: found a stale Initialised/Connected frontend at start,
    /// wrote Closed, waits for it to reset.
    AwaitReset,
    /// Backend: InitWait published, waiting for the frontend's offer.
    /// Frontend: Initialising, waiting for the backend's InitWait.
    Waiting,
    /// The device is starting its connection.
    Starting,
    /// Frontend: keys published and Initialised, waiting for Connected.
    Offered,
    /// Connected.
    Running,
    /// This end wrote Closing and waits for the peer to close.
    Closing,
    /// Closed (and may reconnect).
    Closed,
    /// Failed: closed with an error node, stays so.
    Failed,
    /// Finished.
    Done,
}

/// What both machines keep, and the inputs both handle alike.
#[derive(Debug, Clone)]
struct Common {
    phase: Phase,
    peer: XenbusState,
    device_running: bool,
    /// The peer's state when this end failed: a failed end tries again
    /// only once the peer has moved (see each machine's `Failed` rule).
    failed_at: Option<XenbusState>,
    /// An error node was written and is to be cleared once connected.
    errored: bool,
}

impl Common {
    fn new() -> Common {
        Common {
            phase: Phase::Idle,
            peer: XenbusState::Unknown,
            device_running: false,
            failed_at: None,
            errored: false,
        }
    }

    /// Stops the device's connection if it is started.
    fn stop(&mut self, out: &mut Vec<Action>) {
        if std::mem::take(&mut self.device_running) {
            out.push(Action::StopDevice);
        }
    }

    /// The device failed: error node, Closing, Closed; stays failed.
    fn fail(&mut self, msg: String, out: &mut Vec<Action>) {
        self.stop(out);
        out.push(Action::WriteError(msg));
        out.push(Action::Switch(XenbusState::Closing));
        out.push(Action::Switch(XenbusState::Closed));
        self.errored = true;
        self.failed_at = Some(self.peer);
        self.phase = Phase::Failed;
    }

    /// The task ends; `close` (shutdown) closes the device first unless it
    /// is closed already.
    fn finish(&mut self, close: bool, out: &mut Vec<Action>) {
        self.stop(out);
        if close && !matches!(self.phase, Phase::Closed | Phase::Failed | Phase::Idle) {
            out.push(Action::Switch(XenbusState::Closing));
            out.push(Action::Switch(XenbusState::Closed));
        }
        out.push(Action::Exit);
        self.phase = Phase::Done;
    }
}

/// The backend's machine.
#[derive(Debug, Clone)]
pub struct BackendMachine {
    c: Common,
    online: bool,
}

impl Default for BackendMachine {
    fn default() -> Self {
        Self::new()
    }
}

impl BackendMachine {
    /// A machine that has not started.
    pub fn new() -> BackendMachine {
        BackendMachine {
            c: Common::new(),
            online: true,
        }
    }

    /// Where it is.
    pub fn phase(&self) -> Phase {
        self.c.phase
    }

    /// The peer's last known state.
    pub fn peer(&self) -> XenbusState {
        self.c.peer
    }

    /// Whether the device's connection is started (and must be stopped).
    pub fn device_running(&self) -> bool {
        self.c.device_running
    }

    /// Feeds one input; returns what to do.
    pub fn handle(&mut self, input: Input) -> Vec<Action> {
        use XenbusState as S;
        let mut out = Vec::new();
        if self.c.phase == Phase::Done {
            return out;
        }
        match input {
            Input::Start { peer } => {
                if self.c.phase != Phase::Idle {
                    return out;
                }
                self.c.peer = peer;
                if matches!(peer, S::Initialised | S::Connected) {
                    // Left over from a previous backend: its rings are not
                    // ours to map. Make the frontend start over.
                    out.push(Action::Switch(S::Closed));
                    self.c.phase = Phase::AwaitReset;
                } else {
                    self.wait_for_frontend(&mut out);
                }
            }
            Input::Peer(s) => self.c.peer = s,
            Input::Ready => {
                if self.c.phase == Phase::Starting {
                    out.push(Action::Switch(S::Connected));
                    out.push(Action::Activate);
                    if std::mem::take(&mut self.c.errored) {
                        out.push(Action::ClearError);
                    }
                    self.c.phase = Phase::Running;
                }
            }
            Input::Ended => {
                if matches!(self.c.phase, Phase::Starting | Phase::Running) {
                    self.c.stop(&mut out);
                    out.push(Action::Switch(S::Closed));
                    self.c.phase = Phase::Closed;
                }
            }
            Input::Failed(msg) => self.c.fail(msg, &mut out),
            Input::Offline => {
                self.online = false;
                if !matches!(self.c.phase, Phase::Closed | Phase::Failed | Phase::Idle) {
                    self.c.stop(&mut out);
                    out.push(Action::Switch(S::Closing));
                    self.c.phase = Phase::Closing;
                }
            }
            Input::Shutdown => {
                self.c.finish(true, &mut out);
                return out;
            }
            Input::Removed => {
                self.c.finish(false, &mut out);
                return out;
            }
            Input::PeerGone => {
                self.c.stop(&mut out);
                out.push(Action::Switch(S::Closed));
                out.push(Action::RemoveNodes);
                out.push(Action::Exit);
                self.c.phase = Phase::Done;
                return out;
            }
        }
        self.settle(&mut out);
        out
    }

    fn wait_for_frontend(&mut self, out: &mut Vec<Action>) {
        out.push(Action::PublishFeatures);
        out.push(Action::Switch(XenbusState::InitWait));
        self.c.phase = Phase::Waiting;
    }

    /// Acts on (phase, peer) until nothing changes.
    fn settle(&mut self, out: &mut Vec<Action>) {
        use XenbusState as S;
        loop {
            let before = self.c.phase;
            let peer = self.c.peer;
            match self.c.phase {
                Phase::AwaitReset => {
                    if !matches!(peer, S::Initialised | S::Connected) && self.online {
                        self.wait_for_frontend(out);
                    }
                }
                Phase::Waiting => match peer {
                    S::Initialised | S::Connected => {
                        out.push(Action::StartDevice);
                        self.c.device_running = true;
                        self.c.phase = Phase::Starting;
                    }
                    S::Closing | S::Closed | S::Unknown => {
                        out.push(Action::Switch(S::Closed));
                        self.c.phase = Phase::Closed;
                    }
                    _ => {}
                },
                Phase::Starting | Phase::Running => match peer {
                    S::Initialising | S::InitWait => {
                        // The frontend started over (its daemon restarted).
                        self.c.stop(out);
                        self.wait_for_frontend(out);
                    }
                    S::Closing => {
                        self.c.stop(out);
                        out.push(Action::Switch(S::Closing));
                        self.c.phase = Phase::Closing;
                    }
                    S::Closed | S::Unknown => {
                        self.c.stop(out);
                        out.push(Action::Switch(S::Closed));
                        self.c.phase = Phase::Closed;
                    }
                    _ => {}
                },
                Phase::Closing => {
                    if !matches!(peer, S::Closing | S::Connected | S::Initialised) {
                        out.push(Action::Switch(S::Closed));
                        self.c.phase = Phase::Closed;
                    }
                }
                Phase::Closed => {
                    if self.online && peer == S::Initialising {
                        self.wait_for_frontend(out);
                    }
                }
                Phase::Failed => {
                    let moved = self.c.failed_at.is_some_and(|at| at != S::Initialising);
                    if moved && self.online && peer == S::Initialising {
                        self.c.failed_at = None;
                        self.wait_for_frontend(out);
                    }
                }
                Phase::Idle | Phase::Offered | Phase::Done => {}
            }
            if self.c.phase == before {
                return;
            }
        }
    }
}

/// The frontend's machine.
#[derive(Debug, Clone)]
pub struct FrontendMachine {
    c: Common,
}

impl Default for FrontendMachine {
    fn default() -> Self {
        Self::new()
    }
}

impl FrontendMachine {
    /// A machine that has not started.
    pub fn new() -> FrontendMachine {
        FrontendMachine { c: Common::new() }
    }

    /// Where it is.
    pub fn phase(&self) -> Phase {
        self.c.phase
    }

    /// The peer's last known state.
    pub fn peer(&self) -> XenbusState {
        self.c.peer
    }

    /// Whether the device's connection is started (and must be stopped).
    pub fn device_running(&self) -> bool {
        self.c.device_running
    }

    /// Feeds one input; returns what to do.
    pub fn handle(&mut self, input: Input) -> Vec<Action> {
        use XenbusState as S;
        let mut out = Vec::new();
        if self.c.phase == Phase::Done {
            return out;
        }
        match input {
            Input::Start { peer } => {
                if self.c.phase != Phase::Idle {
                    return out;
                }
                self.c.peer = peer;
                // Whatever a previous frontend left, start over: a backend
                // that was connected to it sees Initialising and resets.
                self.restart(&mut out);
            }
            Input::Peer(s) => self.c.peer = s,
            Input::Ready => {
                if self.c.phase == Phase::Starting {
                    out.push(Action::PublishKeys);
                    out.push(Action::Switch(S::Initialised));
                    self.c.phase = Phase::Offered;
                }
            }
            Input::Ended => {
                if matches!(
                    self.c.phase,
                    Phase::Starting | Phase::Offered | Phase::Running
                ) {
                    self.c.stop(&mut out);
                    self.restart(&mut out);
                }
            }
            Input::Failed(msg) => self.c.fail(msg, &mut out),
            Input::Offline | Input::PeerGone => {}
            Input::Shutdown => {
                self.c.finish(true, &mut out);
                return out;
            }
            Input::Removed => {
                self.c.finish(false, &mut out);
                return out;
            }
        }
        self.settle(&mut out);
        out
    }

    fn restart(&mut self, out: &mut Vec<Action>) {
        out.push(Action::Switch(XenbusState::Initialising));
        self.c.phase = Phase::Waiting;
    }

    fn close(&mut self, out: &mut Vec<Action>) {
        self.c.stop(out);
        out.push(Action::Switch(XenbusState::Closing));
        out.push(Action::Switch(XenbusState::Closed));
        self.c.phase = Phase::Closed;
    }

    fn settle(&mut self, out: &mut Vec<Action>) {
        use XenbusState as S;
        loop {
            let before = self.c.phase;
            let peer = self.c.peer;
            match self.c.phase {
                Phase::Waiting => {
                    if matches!(peer, S::InitWait | S::Initialised) {
                        out.push(Action::StartDevice);
                        self.c.device_running = true;
                        self.c.phase = Phase::Starting;
                    }
                }
                Phase::Starting | Phase::Offered | Phase::Running => match peer {
                    S::Connected if self.c.phase == Phase::Offered => {
                        out.push(Action::Switch(S::Connected));
                        out.push(Action::Activate);
                        if std::mem::take(&mut self.c.errored) {
                            out.push(Action::ClearError);
                        }
                        self.c.phase = Phase::Running;
                    }
                    S::Initialising => {
                        // The backend started over without closing.
                        self.c.stop(out);
                        self.restart(out);
                    }
                    S::InitWait if self.c.phase == Phase::Running => {
                        self.c.stop(out);
                        self.restart(out);
                    }
                    S::Closing | S::Closed | S::Unknown => self.close(out),
                    _ => {}
                },
                // Ready for a (new) backend at once.
                Phase::Closed => self.restart(out),
                Phase::Failed => {
                    if self.c.failed_at.is_some_and(|at| at != peer) {
                        self.c.failed_at = None;
                        self.restart(out);
                    }
                }
                Phase::Idle | Phase::AwaitReset | Phase::Closing | Phase::Done => {}
            }
            if self.c.phase == before {
                return;
            }
        }
    }
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
