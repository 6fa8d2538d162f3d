//! The device task: one per device per end, owned by a daemon. It runs the
//! end's [machine](super::machine) against XenStore and the device:
//!
//! ```text
//!   peer's state watch --\                        /--> switch_state, publish,
//!   daemon's Control ----+--> Input --> machine --+--> error node, rm
//!   device (ready/end) --/                        \--> start / stop the device
//! ```
//!
//! Inputs are gathered in one `select!` whose branches are all cancellation
//! safe (channel receives and a watch stream); XenStore reads happen after
//! a branch fired, never inside a losing branch, so no update is lost.
//! Actions run in order. A device that keeps failing is restarted with a
//! growing delay (100 ms doubling to 5 s), so a broken peer cannot make a
//! busy loop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::device::{BackendConn, ConnEvent, ConnParts, DeviceError, DeviceInfo, FrontendConn};
use super::machine::{Action, BackendMachine, FrontendMachine, Input};
use super::paths::{DeviceId, Side};
use super::state::{clear_error, publish, read_keys, read_state, switch_state, write_error};
use super::XenbusError;
use crate::abi::xenbus::XenbusState;
use crate::platform::Platform;
use crate::xenstore::XsClient;

/// What a daemon drives: one kind of device on one end. The frontend and
/// backend crates adapt their device traits to this.
pub trait Driver: Send + Sync + 'static {
    /// Which end this driver is.
    fn side(&self) -> Side;
    /// Keys to publish before InitWait (backends; frontends return none).
    fn features(&self, info: &DeviceInfo) -> Result<Vec<(String, String)>, DeviceError>;
    /// Runs one connection of the device.
    fn start(&self, conn: Conn) -> BoxFuture<'static, Result<(), DeviceError>>;
    /// The connection ended and everything it held is released.
    fn disconnected(&self, _id: &DeviceId) {}
    /// The device task ended for good (removed, peer gone, shutdown).
    fn finished(&self, _id: &DeviceId) {}
}

/// One connection, for either end.
#[derive(Debug)]
pub enum Conn {
    /// A backend's.
    Backend(BackendConn),
    /// A frontend's.
    Frontend(FrontendConn),
}

/// Messages from the daemon to a device task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Something under this end's directory changed (re-read `state`,
    /// `online`; the directory may be gone).
    OwnChanged,
    /// The peer's domain is gone.
    PeerGone,
}

/// What a device task needs.
#[derive(Debug, Clone)]
pub struct TaskConfig {
    /// XenStore, as this end's domain.
    pub xs: XsClient,
    /// The platform.
    pub platform: Arc<dyn Platform>,
    /// The device.
    pub id: DeviceId,
    /// How long a stopped device may take to return before it is dropped.
    pub grace: Duration,
}

/// How a device task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskEnd {
    /// The device's directory was removed.
    Removed,
    /// The daemon shut down (the device closed).
    Shutdown,
    /// The peer's domain is gone (backend: the nodes were removed).
    PeerGone,
}

enum Machine {
    Back(BackendMachine),
    Front(FrontendMachine),
}

impl Machine {
    fn handle(&mut self, i: Input) -> Vec<Action> {
        match self {
            Machine::Back(m) => m.handle(i),
            Machine::Front(m) => m.handle(i),
        }
    }
}

enum Wake {
    Shutdown,
    Peer,
    WatchEnded,
    Control(Option<Control>),
    Event(Option<ConnEvent>),
    Device(Result<Result<(), DeviceError>, tokio::task::JoinError>),
}

struct Running {
    stop: CancellationToken,
    join: JoinHandle<Result<(), DeviceError>>,
}

struct Task {
    cfg: TaskConfig,
    driver: Arc<dyn Driver>,
    side: Side,
    own_dir: String,
    peer_dir: String,
    info: DeviceInfo,
    machine: Machine,
    device: Option<Running>,
    events_tx: mpsc::UnboundedSender<ConnEvent>,
    keys: Vec<(String, String)>,
    activator: Option<oneshot::Sender<()>>,
    failures: u32,
    last_failure: Option<Instant>,
    shutdown: CancellationToken,
    end: Option<TaskEnd>,
    ending: Option<TaskEnd>,
    finished: bool,
}

/// On every way out (an error included), the device's connection is
/// stopped and the driver told, so nothing it holds outlives the task.
impl Drop for Task {
    fn drop(&mut self) {
        if let Some(run) = self.device.take() {
            run.stop.cancel();
            run.join.abort();
            self.driver.disconnected(&self.info.id);
        }
        if !self.finished {
            self.finished = true;
            self.driver.finished(&self.info.id);
        }
    }
}

/// Runs a device task until the device is removed, its peer's domain is
/// gone, or `shutdown` is cancelled (then the device closes first).
pub async fn run_device(
    cfg: TaskConfig,
    driver: Arc<dyn Driver>,
    mut control: mpsc::UnboundedReceiver<Control>,
    shutdown: CancellationToken,
) -> Result<TaskEnd, XenbusError> {
    let side = driver.side();
    let id = cfg.id.clone();
    let (own_dir, peer_dir) = match side {
        Side::Backend => (id.backend_dir(), id.frontend_dir()),
        Side::Frontend => (id.frontend_dir(), id.backend_dir()),
    };
    let xs = cfg.xs.clone();
    let params = read_keys(&xs, &own_dir).await?;
    if params.is_empty() {
        return Ok(TaskEnd::Removed);
    }
    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    let mut t = Task {
        driver,
        side,
        own_dir,
        info: DeviceInfo { id, params },
        machine: match side {
            Side::Backend => Machine::Back(BackendMachine::new()),
            Side::Frontend => Machine::Front(FrontendMachine::new()),
        },
        device: None,
        events_tx,
        keys: Vec::new(),
        activator: None,
        failures: 0,
        last_failure: None,
        shutdown: shutdown.clone(),
        end: None,
        ending: None,
        finished: false,
        cfg,
        peer_dir,
    };
    // The peer's dir as this end names it must be the one the id implies.
    let peer_key = match side {
        Side::Backend => "frontend",
        Side::Frontend => "backend",
    };
    if let Some(named) = t.info.params.get(peer_key) {
        if *named != t.peer_dir {
            let msg = format!(
                "device {}: {}/{peer_key} = {named:?}, expected {:?}",
                t.info.id, t.own_dir, t.peer_dir
            );
            t.feed(Input::Failed(msg)).await?;
        }
    }
    let mut watch = xs.watch(&format!("{}/state", t.peer_dir)).await?;
    let peer = peer_state(&xs, &t.peer_dir).await?;
    tracing::info!(dev = %t.info.id, ?side, peer = peer.name(), "device task started");
    t.feed(Input::Start { peer }).await?;
    t.own_changed().await?;
    let mut shutdown_seen = false;
    while t.end.is_none() {
        let has_device = t.device.is_some();
        let device = t.device.as_mut().map(|d| &mut d.join);
        let wake = tokio::select! {
            _ = shutdown.cancelled(), if !shutdown_seen => Wake::Shutdown,
            ev = watch.next() => match ev {
                Some(_) => Wake::Peer,
                None => Wake::WatchEnded,
            },
            c = control.recv() => Wake::Control(c),
            ev = events_rx.recv() => Wake::Event(ev),
            r = async move { device.expect("guarded").await }, if has_device => Wake::Device(r),
        };
        let input = match wake {
            Wake::Shutdown => {
                shutdown_seen = true;
                Some(Input::Shutdown)
            }
            Wake::Peer => Some(Input::Peer(peer_state(&xs, &t.peer_dir).await?)),
            Wake::WatchEnded => {
                return Err(XenbusError::WatchEnded {
                    path: t.peer_dir.clone(),
                })
            }
            Wake::Control(Some(Control::OwnChanged)) => {
                t.own_changed().await?;
                None
            }
            Wake::Control(Some(Control::PeerGone)) => Some(Input::PeerGone),
            Wake::Control(None) => Some(Input::Shutdown),
            Wake::Event(Some(ConnEvent::Ready { keys, activated })) => {
                t.keys = keys;
                t.activator = Some(activated);
                Some(Input::Ready)
            }
            Wake::Event(None) => None,
            Wake::Device(r) => t.device_returned(r),
        };
        if let Some(i) = input {
            t.feed(i).await?;
        }
    }
    let end = t.end.expect("loop ended");
    t.finished = true;
    t.driver.finished(&t.info.id);
    tracing::info!(dev = %t.info.id, ?side, ?end, "device task ended");
    Ok(end)
}

impl Task {
    fn xs(&self) -> &XsClient {
        &self.cfg.xs
    }

    /// Feeds an input and runs the actions (which may feed more).
    async fn feed(&mut self, first: Input) -> Result<(), XenbusError> {
        let mut queue = std::collections::VecDeque::from([first]);
        while let Some(input) = queue.pop_front() {
            tracing::debug!(dev = %self.info.id, ?input, "input");
            if matches!(input, Input::Shutdown) {
                self.ending = Some(TaskEnd::Shutdown);
            } else if matches!(input, Input::PeerGone) {
                self.ending = Some(TaskEnd::PeerGone);
            } else if matches!(input, Input::Removed) {
                self.ending = Some(TaskEnd::Removed);
            }
            let actions = self.machine.handle(input);
            for a in actions {
                if let Some(next) = self.act(a).await? {
                    // The rest of the batch assumed this action worked
                    // (PublishFeatures, then InitWait): after a failure
                    // the machine decides afresh. (Not after a removal: a
                    // batch that ends the task, Closed then Exit, meets a
                    // removed directory and must still reach its Exit.)
                    let failed = matches!(next, Input::Failed(_));
                    queue.push_back(next);
                    if failed {
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    async fn act(&mut self, a: Action) -> Result<Option<Input>, XenbusError> {
        tracing::debug!(dev = %self.info.id, action = ?a, "action");
        match a {
            Action::PublishFeatures => match self.driver.features(&self.info) {
                Ok(keys) => return self.publish(keys).await,
                Err(e) => return Ok(Some(Input::Failed(e.to_string()))),
            },
            Action::PublishKeys => {
                let keys = std::mem::take(&mut self.keys);
                return self.publish(keys).await;
            }
            Action::Switch(s) => match switch_state(self.xs(), &self.own_dir, s).await {
                Ok(()) => {
                    tracing::info!(dev = %self.info.id, side = ?self.side, state = s.name(), "state")
                }
                Err(XenbusError::Removed { .. }) => return Ok(Some(Input::Removed)),
                Err(e) => return Err(e),
            },
            Action::StartDevice => return self.start_device().await,
            Action::Activate => {
                if let Some(a) = self.activator.take() {
                    let _ = a.send(());
                }
                self.failures = 0;
            }
            Action::StopDevice => self.stop_device().await,
            Action::WriteError(msg) => {
                tracing::warn!(dev = %self.info.id, side = ?self.side, error = %msg, "device failed");
                self.failures += 1;
                self.last_failure = Some(Instant::now());
                if let Err(e) = write_error(self.xs(), &self.info.id, self.side, &msg).await {
                    tracing::warn!(dev = %self.info.id, error = %e, "writing the error node");
                }
            }
            Action::ClearError => {
                if let Err(e) = clear_error(self.xs(), &self.info.id, self.side).await {
                    tracing::debug!(dev = %self.info.id, error = %e, "clearing the error node");
                }
            }
            Action::RemoveNodes => {
                if let Err(e) = self.cfg.xs.rm(&self.own_dir).await {
                    tracing::warn!(dev = %self.info.id, error = %e, "removing the device's nodes");
                }
            }
            Action::Exit => self.end = Some(self.ending.unwrap_or(TaskEnd::Removed)),
        }
        Ok(None)
    }

    async fn publish(&mut self, keys: Vec<(String, String)>) -> Result<Option<Input>, XenbusError> {
        if keys.is_empty() {
            return Ok(None);
        }
        match publish(self.xs(), &self.own_dir, &keys).await {
            Ok(()) => Ok(None),
            Err(XenbusError::Removed { .. }) => Ok(Some(Input::Removed)),
            Err(e) => Err(e),
        }
    }

    /// Re-reads this end's `state` and `online`: gone means removed.
    async fn own_changed(&mut self) -> Result<(), XenbusError> {
        let state = self
            .cfg
            .xs
            .read_opt(&format!("{}/state", self.own_dir))
            .await?;
        if state.is_none() {
            return self.feed(Input::Removed).await;
        }
        if self.side == Side::Backend {
            let online = self
                .cfg
                .xs
                .read_opt(&format!("{}/online", self.own_dir))
                .await?;
            if online.as_deref() == Some("0") {
                return self.feed(Input::Offline).await;
            }
        }
        Ok(())
    }

    async fn start_device(&mut self) -> Result<Option<Input>, XenbusError> {
        if self.failures > 0 {
            let delay =
                Duration::from_millis(100 << self.failures.min(6)).min(Duration::from_secs(5));
            let since = self.last_failure.map(|t| t.elapsed()).unwrap_or_default();
            if since < delay {
                tokio::select! {
                    _ = tokio::time::sleep(delay - since) => {}
                    _ = self.shutdown.cancelled() => {}
                }
            }
        }
        let peer_keys = read_keys(self.xs(), &self.peer_dir).await?;
        let stop = CancellationToken::new();
        let parts = ConnParts {
            info: self.info.clone(),
            peer_keys,
            peer_dir: self.peer_dir.clone(),
            platform: self.cfg.platform.clone(),
            events: self.events_tx.clone(),
            stop: stop.clone(),
        };
        let conn = match self.side {
            Side::Backend => Conn::Backend(parts.backend()),
            Side::Frontend => Conn::Frontend(parts.frontend()),
        };
        let fut = self.driver.start(conn);
        let join = tokio::spawn(fut);
        self.device = Some(Running { stop, join });
        Ok(None)
    }

    async fn stop_device(&mut self) {
        self.activator = None;
        self.keys.clear();
        let Some(mut run) = self.device.take() else {
            return;
        };
        run.stop.cancel();
        match tokio::time::timeout(self.cfg.grace, &mut run.join).await {
            Ok(Ok(Err(e))) if !matches!(e, DeviceError::Stopped | DeviceError::PeerGone(_)) => {
                tracing::debug!(dev = %self.info.id, error = %e, "device returned on stop");
            }
            Ok(_) => {}
            Err(_) => {
                tracing::warn!(dev = %self.info.id, grace = ?self.cfg.grace, "device did not stop in time; dropped");
                run.join.abort();
                let _ = run.join.await;
            }
        }
        self.driver.disconnected(&self.info.id);
    }

    fn device_returned(
        &mut self,
        r: Result<Result<(), DeviceError>, tokio::task::JoinError>,
    ) -> Option<Input> {
        let run = self.device.take().expect("device was running");
        drop(run);
        self.activator = None;
        self.driver.disconnected(&self.info.id);
        match r {
            Ok(Ok(())) => {
                tracing::info!(dev = %self.info.id, "device connection ended");
                Some(Input::Ended)
            }
            Ok(Err(DeviceError::PeerGone(why))) => {
                tracing::info!(dev = %self.info.id, %why, "peer went away");
                Some(Input::Ended)
            }
            Ok(Err(DeviceError::Stopped)) => Some(Input::Ended),
            Ok(Err(DeviceError::Failed(msg))) => Some(Input::Failed(msg)),
            Err(e) => Some(Input::Failed(format!(
                "device {}: the device's task failed: {e}",
                self.info.id
            ))),
        }
    }
}

/// The peer's state; a node this end may no longer read is gone: an
/// unprivileged reader gets EACCES, not ENOENT, for a node whose parent
/// the toolstack removed.
async fn peer_state(xs: &XsClient, dir: &str) -> Result<XenbusState, XenbusError> {
    match read_state(xs, dir).await {
        Err(XenbusError::Xs { error, .. })
            if error.errno() == Some(crate::abi::xs_wire::XsErrno::Eacces) =>
        {
            Ok(XenbusState::Unknown)
        }
        other => other,
    }
}
