//! The daemon: finds this domain's devices in XenStore, runs one
//! [device task](super::task) per device, hot-plugs and unplugs them, and
//! shuts them down in order. The frontend and backend daemons are this with
//! their side and drivers; services embed it the same way.
//!
//! Where it looks (`<home>` is `/local/domain/<this domid>`):
//!
//! ```text
//!   backend:  <home>/backend/<kind>/<frontend domid>/<devid>/...
//!   frontend: <home>/device/<kind>/<devid>/...   (backend-id names the peer)
//! ```
//!
//! One XenStore watch per device kind covers discovery, removal and each
//! device's own nodes (events are routed to the device's task), plus one
//! per device on the peer's `state`, plus (backend) `@releaseDomain`, after
//! which every device whose frontend domain is no longer introduced gets
//! [`Control::PeerGone`]. So a frontend domain with N devices needs N + 1
//! watches (C xenstored's default quota is 128 per domain).
//!
//! Restart: a daemon that starts while its devices exist re-attaches to
//! them; the [machines](super::machine) bring both ends back to Connected.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::{select_all, BoxStream};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::paths::{DeviceId, Side};
use super::state::parse_domid_key;
use super::task::{run_device, Control, Driver, TaskConfig, TaskEnd};
use super::XenbusError;
use crate::platform::{DomId, Platform};
use crate::xenstore::XsClient;

/// Counters of a daemon, readable while it runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DaemonStats {
    /// Device tasks started.
    pub started: u64,
    /// Device tasks that ended because the device was removed.
    pub removed: u64,
    /// Device tasks that ended because the peer's domain was gone.
    pub peer_gone: u64,
    /// Device tasks that ended with an error (logged).
    pub errors: u64,
    /// Device tasks running now.
    pub running: u64,
}

/// A daemon for one side, with its drivers by device kind.
#[derive(Clone)]
pub struct Daemon {
    xs: XsClient,
    platform: Arc<dyn Platform>,
    side: Side,
    drivers: BTreeMap<String, Arc<dyn Driver>>,
    grace: Duration,
    stats: Arc<Mutex<DaemonStats>>,
    lock_dir: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("side", &self.side)
            .field("kinds", &self.drivers.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A running device task, by its own directory.
struct Entry {
    id: DeviceId,
    control: mpsc::UnboundedSender<Control>,
}

impl Daemon {
    /// A daemon for `side` with no drivers yet.
    pub fn new(xs: XsClient, platform: Arc<dyn Platform>, side: Side) -> Daemon {
        Daemon {
            xs,
            platform,
            side,
            drivers: BTreeMap::new(),
            grace: Duration::from_secs(5),
            stats: Arc::default(),
            lock_dir: None,
        }
    }

    /// Adds the driver of device kind `kind` (it must be of this side).
    pub fn with_driver(mut self, kind: &str, driver: Arc<dyn Driver>) -> Daemon {
        assert_eq!(driver.side(), self.side, "driver of the wrong side");
        self.drivers.insert(kind.to_string(), driver);
        self
    }

    /// How long a stopped device may take before it is dropped.
    pub fn with_grace(mut self, grace: Duration) -> Daemon {
        self.grace = grace;
        self
    }

    /// Serves each device kind only if no other daemon does: [`Daemon::run`]
    /// first takes the lock `<dir>/dom<domid>-<side>-<kind>.lock` for each
    /// kind (held while it runs) and fails with
    /// [`XenbusError::Instance`] ("already served by pid N") if another
    /// process holds one. Two daemons serving one device would fight over
    /// its state.
    pub fn with_lock_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Daemon {
        self.lock_dir = Some(dir.into());
        self
    }

    /// Takes the instance locks (see [`Daemon::with_lock_dir`]).
    fn lock_kinds(&self) -> Result<Vec<crate::instance::InstanceLock>, XenbusError> {
        let Some(dir) = &self.lock_dir else {
            return Ok(Vec::new());
        };
        let side = match self.side {
            Side::Backend => "backend",
            Side::Frontend => "frontend",
        };
        let domid = self.platform.domid();
        let instance = |kind: &str, error| XenbusError::Instance {
            kind: kind.to_string(),
            domid,
            side,
            error,
        };
        if let Err(e) = std::fs::create_dir_all(dir) {
            let path = dir.clone();
            let kind = self.drivers.keys().next().cloned().unwrap_or_default();
            return Err(instance(
                &kind,
                crate::instance::InstanceLockError::Io { path, error: e },
            ));
        }
        self.drivers
            .keys()
            .map(|kind| {
                crate::instance::InstanceLock::acquire(
                    dir.join(format!("dom{domid}-{side}-{kind}.lock")),
                )
                .map_err(|e| instance(kind, e))
            })
            .collect()
    }

    /// The counters.
    pub fn stats(&self) -> DaemonStats {
        self.stats.lock().expect("stats lock").clone()
    }

    fn home(&self) -> String {
        format!("/local/domain/{}", self.platform.domid())
    }

    fn base(&self, kind: &str) -> String {
        match self.side {
            Side::Backend => format!("{}/backend/{kind}", self.home()),
            Side::Frontend => format!("{}/device/{kind}", self.home()),
        }
    }

    /// Runs until `shutdown` is cancelled, then closes every device
    /// (Closing, Closed) and returns. Fails at once if another daemon holds
    /// a kind's instance lock ([`Daemon::with_lock_dir`]), and stops with
    /// [`XenbusError::PlatformEnded`] when the platform ends this domain's
    /// session (its domain destroyed, its host gone).
    ///
    /// Cancellation: dropping the future aborts the device tasks without
    /// closing the devices (their rings and grants are released).
    pub async fn run(&self, shutdown: CancellationToken) -> Result<DaemonStats, XenbusError> {
        let _locks = self.lock_kinds()?;
        let mut ended = self.platform.ended();
        match self.serve(shutdown, &mut ended).await {
            Err(e) if !matches!(e, XenbusError::PlatformEnded { .. }) => {
                // A failing XenStore call is often the first sign of a host
                // that went away (it serves XenStore too): if the platform
                // ended, that is the error to report.
                match tokio::time::timeout(Duration::from_secs(2), &mut ended).await {
                    Ok(error) => Err(XenbusError::PlatformEnded {
                        domid: self.platform.domid(),
                        error,
                    }),
                    Err(_) => Err(e),
                }
            }
            r => r,
        }
    }

    async fn serve(
        &self,
        shutdown: CancellationToken,
        ended: &mut futures::future::BoxFuture<'static, crate::platform::PlatformError>,
    ) -> Result<DaemonStats, XenbusError> {
        let mut watches: Vec<BoxStream<'static, (String, String)>> = Vec::new();
        for kind in self.drivers.keys() {
            let k = kind.clone();
            let w = self.xs.watch(&self.base(kind)).await?;
            watches.push(w.map(move |p| (k.clone(), p)).boxed());
        }
        if self.side == Side::Backend {
            let w = self.xs.watch("@releaseDomain").await?;
            watches.push(w.map(|p| (String::new(), p)).boxed());
        }
        let mut events = select_all(watches);
        let mut tasks: HashMap<String, Entry> = HashMap::new();
        let mut set: JoinSet<(DeviceId, Result<TaskEnd, XenbusError>)> = JoinSet::new();
        let devices = CancellationToken::new();
        tracing::info!(side = ?self.side, domid = self.platform.domid(),
            kinds = ?self.drivers.keys().collect::<Vec<_>>(), "daemon started");
        for kind in self.drivers.keys() {
            self.rescan(kind, &mut tasks, &mut set, &devices).await?;
        }
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                error = &mut *ended => {
                    // Nothing can be closed in order any more: the
                    // domain or its host is gone. Drop the devices.
                    tracing::error!(domid = self.platform.domid(), %error,
                        devices = tasks.len(), "the platform ended this domain's session");
                    devices.cancel();
                    set.shutdown().await;
                    return Err(XenbusError::PlatformEnded {
                        domid: self.platform.domid(),
                        error,
                    });
                }
                ev = events.next() => {
                    let Some((kind, path)) = ev else {
                        return Err(XenbusError::WatchEnded { path: self.home() });
                    };
                    if kind.is_empty() {
                        self.released(&tasks).await?;
                    } else {
                        self.route(&kind, &path, &mut tasks, &mut set, &devices).await?;
                    }
                }
                Some(done) = set.join_next(), if !set.is_empty() => {
                    self.reap(done, &mut tasks);
                }
            }
        }
        tracing::info!(side = ?self.side, devices = tasks.len(), "daemon shutting down");
        devices.cancel();
        let deadline = self.grace * 2 + Duration::from_secs(1);
        let drain = async {
            while let Some(done) = set.join_next().await {
                self.reap(done, &mut tasks);
            }
        };
        if tokio::time::timeout(deadline, drain).await.is_err() {
            tracing::warn!(left = set.len(), "devices did not close in time; aborted");
            set.shutdown().await;
        }
        Ok(self.stats())
    }

    fn reap(
        &self,
        done: Result<(DeviceId, Result<TaskEnd, XenbusError>), tokio::task::JoinError>,
        tasks: &mut HashMap<String, Entry>,
    ) {
        let mut st = self.stats.lock().expect("stats lock");
        st.running = st.running.saturating_sub(1);
        match done {
            Ok((id, r)) => {
                tasks.remove(&id.dir(self.side));
                match r {
                    Ok(TaskEnd::Removed) => st.removed += 1,
                    Ok(TaskEnd::PeerGone) => st.peer_gone += 1,
                    Ok(TaskEnd::Shutdown) => {}
                    Err(e) => {
                        st.errors += 1;
                        tracing::error!(dev = %id, error = %e, "device task failed");
                    }
                }
            }
            Err(e) => {
                st.errors += 1;
                tracing::error!(error = %e, "device task panicked");
            }
        }
    }

    /// Finds every device of `kind` and starts the missing tasks.
    async fn rescan(
        &self,
        kind: &str,
        tasks: &mut HashMap<String, Entry>,
        set: &mut JoinSet<(DeviceId, Result<TaskEnd, XenbusError>)>,
        devices: &CancellationToken,
    ) -> Result<(), XenbusError> {
        let base = self.base(kind);
        let list = |p: String| {
            let xs = self.xs.clone();
            async move {
                match xs.directory(&p).await {
                    Ok(v) => Ok(v),
                    Err(e) if e.is_not_found() => Ok(Vec::new()),
                    Err(e) => Err(XenbusError::from(e)),
                }
            }
        };
        let mut found = Vec::new();
        match self.side {
            Side::Backend => {
                for fe in list(base.clone()).await? {
                    for dev in list(format!("{base}/{fe}")).await? {
                        found.push(format!("{base}/{fe}/{dev}"));
                    }
                }
            }
            Side::Frontend => {
                for dev in list(base.clone()).await? {
                    found.push(format!("{base}/{dev}"));
                }
            }
        }
        for dir in found {
            self.consider(kind, &dir, tasks, set, devices).await?;
        }
        Ok(())
    }

    /// An event under `<base>`: to the device's task, or discovery.
    async fn route(
        &self,
        kind: &str,
        path: &str,
        tasks: &mut HashMap<String, Entry>,
        set: &mut JoinSet<(DeviceId, Result<TaskEnd, XenbusError>)>,
        devices: &CancellationToken,
    ) -> Result<(), XenbusError> {
        let base = self.base(kind);
        let Some(rest) = path.strip_prefix(&base) else {
            return Ok(());
        };
        let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
        let depth = match self.side {
            Side::Backend => 2,
            Side::Frontend => 1,
        };
        if parts.len() < depth {
            // The watched directory itself, or a level above a device: the
            // event may stand for many (a lagging watch's events coalesce
            // into one for the watched path, and a watch set again after a
            // reconnect fires once for it). Any device of the kind may have
            // changed: tell every one, then look for new ones.
            let prefix = format!("{base}/");
            for (dir, e) in tasks.iter() {
                if dir.starts_with(&prefix) {
                    let _ = e.control.send(Control::OwnChanged);
                }
            }
            return self.rescan(kind, tasks, set, devices).await;
        }
        let dir = format!("{base}/{}", parts[..depth].join("/"));
        let known = tasks.get(&dir).map(|e| e.control.clone());
        match known {
            Some(c) => {
                let _ = c.send(Control::OwnChanged);
                Ok(())
            }
            None => self.consider(kind, &dir, tasks, set, devices).await,
        }
    }

    /// Starts a task for the device at `dir` if it is complete and new.
    async fn consider(
        &self,
        kind: &str,
        dir: &str,
        tasks: &mut HashMap<String, Entry>,
        set: &mut JoinSet<(DeviceId, Result<TaskEnd, XenbusError>)>,
        devices: &CancellationToken,
    ) -> Result<(), XenbusError> {
        if tasks.contains_key(dir) {
            return Ok(());
        }
        let id = match self.device_at(kind, dir).await? {
            Some(id) => id,
            None => return Ok(()),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let cfg = TaskConfig {
            xs: self.xs.clone(),
            platform: self.platform.clone(),
            id: id.clone(),
            grace: self.grace,
        };
        let driver = self.drivers[kind].clone();
        let token = devices.child_token();
        let tid = id.clone();
        set.spawn(async move { (tid, run_device(cfg, driver, rx, token).await) });
        tasks.insert(
            dir.to_string(),
            Entry {
                id: id.clone(),
                control: tx,
            },
        );
        let mut st = self.stats.lock().expect("stats lock");
        st.started += 1;
        st.running += 1;
        tracing::debug!(dev = %id, "device task spawned");
        Ok(())
    }

    /// The device whose directory is `dir`, once its `state` exists;
    /// `None` if it is not (or no longer) a complete device, or its path or
    /// `backend-id` is not a device's (logged).
    async fn device_at(&self, kind: &str, dir: &str) -> Result<Option<DeviceId>, XenbusError> {
        if self.xs.read_opt(&format!("{dir}/state")).await?.is_none() {
            return Ok(None);
        }
        let parsed = match self.side {
            Side::Backend => DeviceId::from_backend_dir(dir),
            Side::Frontend => {
                let keys: BTreeMap<String, String> = self
                    .xs
                    .read_opt(&format!("{dir}/backend-id"))
                    .await?
                    .map(|v| ("backend-id".to_string(), v))
                    .into_iter()
                    .collect();
                parse_domid_key(&keys, dir, "backend-id")
                    .and_then(|be| DeviceId::from_frontend_dir(dir, be))
            }
        };
        match parsed {
            Ok(id) if id.kind == kind && id.domid(self.side) == self.platform.domid() => {
                Ok(Some(id))
            }
            Ok(id) => {
                tracing::warn!(dir, dev = %id, "ignoring a device that is not this domain's");
                Ok(None)
            }
            Err(e) => {
                tracing::warn!(dir, error = %e, "ignoring a device with a bad path or backend-id");
                Ok(None)
            }
        }
    }

    /// After @releaseDomain: tells the devices whose frontend domain is
    /// gone.
    async fn released(&self, tasks: &HashMap<String, Entry>) -> Result<(), XenbusError> {
        let mut checked: HashMap<DomId, bool> = HashMap::new();
        for e in tasks.values() {
            let id = &e.id;
            if id.frontend == 0 || id.frontend == self.platform.domid() {
                continue;
            }
            let alive = match checked.get(&id.frontend) {
                Some(a) => *a,
                None => {
                    let a = self.xs.is_domain_introduced(id.frontend).await?;
                    checked.insert(id.frontend, a);
                    a
                }
            };
            if !alive {
                tracing::info!(dev = %id, frontend = id.frontend, "frontend domain is gone");
                let _ = e.control.send(Control::PeerGone);
            }
        }
        Ok(())
    }
}
