//! Notes when each device has both ends Connected, from a handful of
//! XenStore watches on its own dom0 connection (one on the backend's
//! device directory, one per frontend domain's), so that waiting for 256
//! devices costs 5 watches and one read per state change rather than two
//! watches per device.
//!
//! A watch that lagged (or its first event) yields the watched directory
//! itself; then every device still pending is read again, so nothing is
//! missed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::{select_all, StreamExt};
use tokio::sync::Notify;
use xenring::abi::xenbus::XenbusState;
use xenring::xenbus::DeviceId;
use xenring::xenstore::XsClient;

#[derive(Default)]
struct Entry {
    backend: bool,
    frontend: bool,
    connected: Option<Instant>,
}

#[derive(Default)]
struct State {
    /// By state path: the device and whether it is the backend's.
    paths: HashMap<String, (DeviceId, bool)>,
    devices: HashMap<DeviceId, Entry>,
}

/// The tracker; cheap to clone.
#[derive(Clone)]
pub struct Tracker {
    xs: XsClient,
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
}

impl Tracker {
    /// Watches the chan device directories of backend dom0 and of the
    /// frontend domains `fes`, on a connection of its own.
    pub async fn start(
        xenstore: &std::path::Path,
        fes: &[u16],
    ) -> anyhow::Result<(Tracker, tokio::task::JoinHandle<()>)> {
        let xs = XsClient::connect(xenstore).await?;
        let mut watches = vec![xs.watch("/local/domain/0/backend/chan").await?];
        for fe in fes {
            watches.push(xs.watch(&format!("/local/domain/{fe}/device/chan")).await?);
        }
        let t = Tracker {
            xs,
            state: Arc::default(),
            changed: Arc::default(),
        };
        let me = t.clone();
        let task = tokio::spawn(async move {
            let mut events = select_all(watches);
            while let Some(path) = events.next().await {
                me.on_event(&path).await;
            }
        });
        Ok((t, task))
    }

    /// Starts following `id` (before it is created).
    pub fn add(&self, id: &DeviceId) {
        let mut st = self.state.lock().expect("tracker lock");
        st.paths
            .insert(format!("{}/state", id.backend_dir()), (id.clone(), true));
        st.paths
            .insert(format!("{}/state", id.frontend_dir()), (id.clone(), false));
        st.devices.insert(id.clone(), Entry::default());
    }

    /// Stops following `id`.
    pub fn forget(&self, id: &DeviceId) {
        let mut st = self.state.lock().expect("tracker lock");
        st.paths.remove(&format!("{}/state", id.backend_dir()));
        st.paths.remove(&format!("{}/state", id.frontend_dir()));
        st.devices.remove(id);
    }

    async fn on_event(&self, path: &str) {
        let targets: Vec<(String, DeviceId, bool)> = {
            let st = self.state.lock().expect("tracker lock");
            match st.paths.get(path) {
                Some((id, be)) => vec![(path.to_string(), id.clone(), *be)],
                None if !path.ends_with("/state") => st
                    .paths
                    .iter()
                    .filter(|(_, (id, _))| {
                        st.devices.get(id).is_some_and(|e| e.connected.is_none())
                    })
                    .map(|(p, (id, be))| (p.clone(), id.clone(), *be))
                    .collect(),
                None => Vec::new(),
            }
        };
        for (p, id, be) in targets {
            let v = self.xs.read_opt(&p).await.ok().flatten();
            let connected = v.as_deref().and_then(|v| v.parse::<XenbusState>().ok())
                == Some(XenbusState::Connected);
            let mut st = self.state.lock().expect("tracker lock");
            if let Some(e) = st.devices.get_mut(&id) {
                if be {
                    e.backend = connected;
                } else {
                    e.frontend = connected;
                }
                if e.backend && e.frontend && e.connected.is_none() {
                    e.connected = Some(Instant::now());
                    self.changed.notify_waiters();
                }
            }
        }
    }

    /// When `id` had both ends Connected; waits at most `timeout`.
    pub async fn connected(&self, id: &DeviceId, timeout: Duration) -> anyhow::Result<Instant> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            if let Some(t) = self.when(id) {
                return Ok(t);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                anyhow::bail!("device {id}: not Connected on both ends after {timeout:?}");
            }
        }
    }

    fn when(&self, id: &DeviceId) -> Option<Instant> {
        let st = self.state.lock().expect("tracker lock");
        st.devices.get(id).and_then(|e| e.connected)
    }
}
