//! What `xl` does for devices, as dom0: create a device's two directories,
//! remove them the orderly way, list every device.
//!
//! Nodes and permissions (as libxl writes them):
//!
//! ```text
//! frontend dir  [n<fe>, r<be>]  backend = <backend dir>, backend-id = <be>, state = 1, <frontend params>
//! backend dir   [n<be>, r<fe>]  frontend = <frontend dir>, frontend-id = <fe>, online = 1, state = 1, <backend params>
//! ```
//!
//! Creating takes three steps because an [`XsTxn`]
//! cannot set permissions: (1) in one transaction, check that neither
//! directory exists and make both, empty; (2) set the permissions of the
//! two directories; (3) in one transaction, write every key (keys inherit
//! their directory's permissions, as in XenStore every new node does). So
//! no key is ever visible with other permissions than its final ones, and
//! a peer sees either no keys or all of them. Between (1) and (3) the
//! directories exist and are empty (their state reads Unknown).
//!
//! Removing (`xl device-detach`): write `online = 0` and `state = 5`
//! (Closing) to the backend, wait (through a watch) until the backend is
//! Closed or gone, then remove both directories, both error nodes and the
//! parents left empty, in one transaction. `force` removes at once.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use super::paths::{DeviceId, Side};
use super::state::{read_state, watch_state};
use super::XenbusError;
use crate::abi::grant::DomId;
use crate::abi::xenbus::XenbusState;
use crate::xenstore::{Perm, PermAccess, XsClient, XsError, XsTxn};

/// Keys the toolstack writes itself; parameters may not override them.
const FRONTEND_KEYS: [&str; 3] = ["backend", "backend-id", "state"];
const BACKEND_KEYS: [&str; 4] = ["frontend", "frontend-id", "online", "state"];

/// A device to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSpec {
    /// The device.
    pub id: DeviceId,
    /// Extra keys for the backend dir (`params`, `mode`, `mac`, ...).
    pub backend_params: Vec<(String, String)>,
    /// Extra keys for the frontend dir.
    pub frontend_params: Vec<(String, String)>,
}

impl DeviceSpec {
    /// A device with no extra keys.
    pub fn new(id: DeviceId) -> DeviceSpec {
        DeviceSpec {
            id,
            backend_params: Vec::new(),
            frontend_params: Vec::new(),
        }
    }
}

/// How [`remove_device`] goes about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoveOptions {
    /// How long to wait for the backend to reach Closed.
    pub timeout: Duration,
    /// Remove at once, without asking the backend to close first.
    pub force: bool,
}

impl Default for RemoveOptions {
    /// Ten seconds (libxl's device timeout), not forced.
    fn default() -> Self {
        RemoveOptions {
            timeout: Duration::from_secs(10),
            force: false,
        }
    }
}

/// A state node as [`list_devices`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeState {
    /// The side's directory does not exist.
    Absent,
    /// The state (Unknown if the directory has no `state` node).
    State(XenbusState),
    /// The node holds something that is not a state (at most 64 characters).
    Bad(String),
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeState::Absent => f.write_str("-"),
            NodeState::State(s) => write!(f, "{} ({})", s.name(), s.raw()),
            NodeState::Bad(v) => write!(f, "bad {v:?}"),
        }
    }
}

/// One device as [`list_devices`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceStatus {
    /// The device.
    pub id: DeviceId,
    /// The backend's state.
    pub backend_state: NodeState,
    /// The frontend's state.
    pub frontend_state: NodeState,
    /// The backend's `online` (`None`: no backend dir, or no such key, or
    /// neither 0 nor 1).
    pub online: Option<bool>,
    /// The backend's error message, if any (as written, up to
    /// [`ERROR_MAX`](super::state::ERROR_MAX) bytes from our writers).
    pub backend_error: Option<String>,
    /// The frontend's error message, if any.
    pub frontend_error: Option<String>,
}

/// Checks one extra key: a relative XenStore path that does not override
/// one the toolstack writes.
fn check_param(key: &str, reserved: &[&str]) -> Result<(), XenbusError> {
    let bad = |why: &str| XenbusError::BadParam {
        key: key.to_string(),
        why: why.to_string(),
    };
    if key.is_empty() {
        return Err(bad("empty key"));
    }
    if key.starts_with('/') || key.ends_with('/') || key.contains("//") {
        return Err(bad("a key is a relative path with no empty component"));
    }
    if !key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '/'))
    {
        return Err(bad("only A-Z a-z 0-9 - _ / are allowed in a key"));
    }
    if reserved.contains(&key) {
        return Err(bad("the toolstack writes this key itself"));
    }
    Ok(())
}

/// Creates a device the way `xl` does (see the module docs for the nodes
/// and permissions). [`XenbusError::Exists`] if either directory exists,
/// [`XenbusError::NoDomain`] if a domain is not introduced to XenStore
/// (whose home the device would otherwise be written into before it
/// exists), [`XenbusError::BadParam`] for a parameter that would override
/// a toolstack key or is not a valid key.
///
/// Run as dom0. Not cancellation safe: dropped between its steps, it can
/// leave the two directories empty; [`remove_device`] with `force` clears
/// them.
pub async fn create_device(xs: &XsClient, spec: &DeviceSpec) -> Result<(), XenbusError> {
    let id = &spec.id;
    for (k, _) in &spec.frontend_params {
        check_param(k, &FRONTEND_KEYS)?;
    }
    for (k, _) in &spec.backend_params {
        check_param(k, &BACKEND_KEYS)?;
    }
    let (fe_dir, be_dir) = (id.frontend_dir(), id.backend_dir());
    for domid in [id.frontend, id.backend] {
        let known = xs
            .is_domain_introduced(domid)
            .await
            .map_err(XenbusError::xs("create-device", &fe_dir))?;
        if !known {
            return Err(XenbusError::NoDomain { domid });
        }
    }

    // (1) Both directories, empty, if neither exists. (Transaction bodies
    // here own what they use: borrowing the caller's arguments would make
    // the returned futures not `Send`.)
    let (id2, dirs) = (id.clone(), [fe_dir.clone(), be_dir]);
    xs.transaction(async move |t| {
        for dir in &dirs {
            if t.read_opt(dir).await?.is_some() {
                return Ok(Err(XenbusError::Exists {
                    id: id2.clone(),
                    dir: dir.clone(),
                }));
            }
        }
        for dir in &dirs {
            t.mkdir(dir).await?;
        }
        Ok(Ok(()))
    })
    .await
    .map_err(XenbusError::xs("create-device", &fe_dir))??;

    // (2) Permissions, and (3) the keys; undo (1) on failure.
    let r = fill(xs, spec).await;
    if let Err(e) = &r {
        if !e.is_removed() {
            let _ = remove_nodes(xs, id).await;
        }
    }
    if r.is_ok() {
        tracing::info!(device = %id, backend = id.backend, "device created");
    }
    r
}

/// Steps (2) and (3) of [`create_device`].
async fn fill(xs: &XsClient, spec: &DeviceSpec) -> Result<(), XenbusError> {
    let id = &spec.id;
    let (fe_dir, be_dir) = (id.frontend_dir(), id.backend_dir());
    let (fe, be) = (id.frontend, id.backend);
    let fe_perms = [
        Perm::new(fe, PermAccess::None),
        Perm::new(be, PermAccess::Read),
    ];
    let be_perms = [
        Perm::new(be, PermAccess::None),
        Perm::new(fe, PermAccess::Read),
    ];
    xs.set_perms(&fe_dir, &fe_perms)
        .await
        .map_err(XenbusError::xs("create-device", &fe_dir))?;
    xs.set_perms(&be_dir, &be_perms)
        .await
        .map_err(XenbusError::xs("create-device", &be_dir))?;

    let mut fe_keys: Vec<(String, String)> = vec![
        ("backend".into(), be_dir.clone()),
        ("backend-id".into(), be.to_string()),
        ("state".into(), XenbusState::Initialising.to_string()),
    ];
    fe_keys.extend(spec.frontend_params.iter().cloned());
    let mut be_keys: Vec<(String, String)> = vec![
        ("frontend".into(), fe_dir.clone()),
        ("frontend-id".into(), fe.to_string()),
        ("online".into(), "1".into()),
        ("state".into(), XenbusState::Initialising.to_string()),
    ];
    be_keys.extend(spec.backend_params.iter().cloned());
    let all = [(fe_dir.clone(), fe_keys), (be_dir, be_keys)];
    xs.transaction(async move |t| {
        for (dir, keys) in &all {
            if t.read_opt(dir).await?.is_none() {
                return Ok(Err(XenbusError::Removed { dir: dir.clone() }));
            }
            for (k, v) in keys.iter() {
                t.write(&format!("{dir}/{k}"), v).await?;
            }
        }
        Ok(Ok(()))
    })
    .await
    .map_err(XenbusError::xs("create-device", &fe_dir))?
}

/// Removes `path` and then each parent left empty, up to (not including)
/// `keep`, in the transaction `t`.
async fn rm_pruning(t: &XsTxn, path: &str, keep: &str) -> Result<(), XsError> {
    if t.read_opt(path).await?.is_some() {
        t.rm(path).await?;
    }
    let mut p = path;
    while let Some((parent, _)) = p.rsplit_once('/') {
        if parent.len() <= keep.len() || !parent.starts_with(keep) {
            break;
        }
        match t.directory(parent).await {
            Ok(kids) if kids.is_empty() => t.rm(parent).await?,
            Ok(_) => break,
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
        p = parent;
    }
    Ok(())
}

/// Removes both directories of `id`, both error nodes, and the parents
/// left empty (below `device/`, `backend/` and `error/`), in one
/// transaction.
async fn remove_nodes(xs: &XsClient, id: &DeviceId) -> Result<(), XenbusError> {
    let home = |d: DomId| format!("/local/domain/{d}");
    let targets = [
        (id.frontend_dir(), format!("{}/device", home(id.frontend))),
        (id.backend_dir(), format!("{}/backend", home(id.backend))),
        (
            id.error_dir(Side::Frontend),
            format!("{}/error", home(id.frontend)),
        ),
        (
            id.error_dir(Side::Backend),
            format!("{}/error", home(id.backend)),
        ),
    ];
    xs.transaction(async move |t| {
        for (path, keep) in &targets {
            rm_pruning(t, path, keep).await?;
        }
        Ok(())
    })
    .await
    .map_err(XenbusError::xs("remove-device", &id.backend_dir()))
}

/// Removes a device like `xl device-detach`: sets the backend's `online`
/// to 0 and its state to Closing, waits (through a watch, up to
/// `opts.timeout`) until the backend is Closed or its directory is gone,
/// then removes both directories and both sides' error nodes. If the
/// backend does not close in time the answer is [`XenbusError::Stuck`]
/// and nothing is removed. With `opts.force`, removes at once.
/// [`XenbusError::NoDevice`] if neither directory exists.
///
/// Run as dom0. Cancellation safe: dropped while waiting, it leaves the
/// backend asked to close (Closing, offline), which a later call resumes.
pub async fn remove_device(
    xs: &XsClient,
    id: &DeviceId,
    opts: RemoveOptions,
) -> Result<(), XenbusError> {
    let (fe_dir, be_dir) = (id.frontend_dir(), id.backend_dir());
    let op = "remove-device";
    let exists = |dir: String| async move {
        xs.read_opt(&dir)
            .await
            .map(|v| v.is_some())
            .map_err(XenbusError::xs(op, &dir))
    };
    let (fe_there, be_there) = (exists(fe_dir.clone()).await?, exists(be_dir.clone()).await?);
    if !fe_there && !be_there {
        return Err(XenbusError::NoDevice { id: id.clone() });
    }
    if !opts.force && be_there {
        ask_to_close(xs, &be_dir).await?;
        wait_closed(xs, id, opts.timeout).await?;
    }
    remove_nodes(xs, id).await?;
    tracing::info!(device = %id, force = opts.force, "device removed");
    Ok(())
}

/// Writes `online = 0` and `state = Closing` to the backend in one
/// transaction, unless it is gone or Closed already.
async fn ask_to_close(xs: &XsClient, be_dir: &str) -> Result<(), XenbusError> {
    let state = format!("{be_dir}/state");
    let dir = be_dir.to_string();
    xs.transaction(async move |t| {
        if t.read_opt(&dir).await?.is_none() {
            return Ok(());
        }
        let cur = t.read_opt(&state).await?;
        if cur.as_deref() == Some("6") {
            return Ok(());
        }
        t.write(&format!("{dir}/online"), "0").await?;
        t.write(&state, &XenbusState::Closing.to_string()).await
    })
    .await
    .map_err(XenbusError::xs("remove-device", be_dir))
}

/// Waits until the backend is Closed or gone, or `timeout` passes.
async fn wait_closed(xs: &XsClient, id: &DeviceId, timeout: Duration) -> Result<(), XenbusError> {
    let be_dir = id.backend_dir();
    let mut w = watch_state(xs, &be_dir).await?;
    let wait = async {
        loop {
            match w.next().await {
                Ok(XenbusState::Closed) => return Ok(()),
                // No state node: is the directory gone?
                Ok(XenbusState::Unknown) => {
                    let gone = xs
                        .read_opt(&be_dir)
                        .await
                        .map_err(XenbusError::xs("remove-device", &be_dir))?
                        .is_none();
                    if gone {
                        return Ok(());
                    }
                }
                Ok(_) | Err(XenbusError::BadState { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    };
    match tokio::time::timeout(timeout, wait).await {
        Ok(r) => r,
        Err(_) => {
            let state = read_state(xs, &be_dir)
                .await
                .unwrap_or(XenbusState::Unknown);
            Err(XenbusError::Stuck {
                id: id.clone(),
                state,
                timeout,
            })
        }
    }
}

/// Children of `path`; none if it does not exist.
async fn kids(xs: &XsClient, path: &str) -> Result<Vec<String>, XenbusError> {
    match xs.directory(path).await {
        Ok(k) => Ok(k),
        Err(e) if e.is_not_found() => Ok(Vec::new()),
        Err(e) => Err(XenbusError::xs("list-devices", path)(e)),
    }
}

async fn read_opt(xs: &XsClient, path: &str) -> Result<Option<String>, XenbusError> {
    xs.read_opt(path)
        .await
        .map_err(XenbusError::xs("list-devices", path))
}

/// The state of the device in `dir`, as a listing shows it.
async fn node_state(xs: &XsClient, dir: &str) -> Result<NodeState, XenbusError> {
    if read_opt(xs, dir).await?.is_none() {
        return Ok(NodeState::Absent);
    }
    match read_state(xs, dir).await {
        Ok(s) => Ok(NodeState::State(s)),
        Err(XenbusError::BadState { value, .. }) => Ok(NodeState::Bad(value)),
        Err(e) => Err(e),
    }
}

/// The backend domain a frontend dir names: `backend-id`, else the domain
/// in `backend`, else dom0.
async fn backend_of(xs: &XsClient, fe_dir: &str) -> Result<DomId, XenbusError> {
    if let Some(v) = read_opt(xs, &format!("{fe_dir}/backend-id")).await? {
        if let Ok(d) = v.trim().parse::<DomId>() {
            return Ok(d);
        }
    }
    if let Some(p) = read_opt(xs, &format!("{fe_dir}/backend")).await? {
        if let Ok(id) = DeviceId::from_backend_dir(p.trim()) {
            return Ok(id.backend);
        }
    }
    Ok(0)
}

/// Every device in XenStore: each backend dir under
/// `/local/domain/*/backend/*/*/*` and each frontend dir under
/// `/local/domain/*/device/*/*` (a frontend's backend domain comes from its
/// `backend-id`), merged by [`DeviceId`], with both states, `online` and
/// both sides' error messages. Sorted by [`DeviceId`]. Entries that do not
/// name a device (a non-numeric domain, a bad kind) are skipped.
///
/// Run as dom0 (it reads everything). Not a snapshot: each node is read
/// once, and a device changing meanwhile may show a mix of before and
/// after. Cancellation safe (it only reads).
pub async fn list_devices(xs: &XsClient) -> Result<Vec<DeviceStatus>, XenbusError> {
    let mut ids = BTreeSet::new();
    for d in kids(xs, "/local/domain").await? {
        let home = format!("/local/domain/{d}");
        for kind in kids(xs, &format!("{home}/backend")).await? {
            for fe in kids(xs, &format!("{home}/backend/{kind}")).await? {
                for devid in kids(xs, &format!("{home}/backend/{kind}/{fe}")).await? {
                    let dir = format!("{home}/backend/{kind}/{fe}/{devid}");
                    match DeviceId::from_backend_dir(&dir) {
                        Ok(id) => {
                            ids.insert(id);
                        }
                        Err(e) => tracing::debug!(error = %e, "not a device"),
                    }
                }
            }
        }
        for kind in kids(xs, &format!("{home}/device")).await? {
            for devid in kids(xs, &format!("{home}/device/{kind}")).await? {
                let dir = format!("{home}/device/{kind}/{devid}");
                let be = backend_of(xs, &dir).await?;
                match DeviceId::from_frontend_dir(&dir, be) {
                    Ok(id) => {
                        ids.insert(id);
                    }
                    Err(e) => tracing::debug!(error = %e, "not a device"),
                }
            }
        }
    }
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        out.push(device_status(xs, id).await?);
    }
    Ok(out)
}

/// One device's states, `online` and error messages, as [`list_devices`]
/// shows them. Cancellation safe (it only reads).
pub async fn device_status(xs: &XsClient, id: DeviceId) -> Result<DeviceStatus, XenbusError> {
    let be_dir = id.backend_dir();
    let backend_state = node_state(xs, &be_dir).await?;
    let online = match backend_state {
        NodeState::Absent => None,
        _ => match read_opt(xs, &format!("{be_dir}/online")).await?.as_deref() {
            Some("1") => Some(true),
            Some("0") => Some(false),
            _ => None,
        },
    };
    let frontend_state = node_state(xs, &id.frontend_dir()).await?;
    let error = |side| {
        let path = id.error_path(side);
        async move { read_opt(xs, &path).await }
    };
    Ok(DeviceStatus {
        backend_error: error(Side::Backend).await?,
        frontend_error: error(Side::Frontend).await?,
        id,
        backend_state,
        frontend_state,
        online,
    })
}

/// The keys directly in a device directory and their values (sorted;
/// empty if the directory does not exist). Cancellation safe.
pub async fn device_keys(xs: &XsClient, dir: &str) -> Result<Vec<(String, String)>, XenbusError> {
    let mut out = Vec::new();
    for k in kids(xs, dir).await? {
        if let Some(v) = read_opt(xs, &format!("{dir}/{k}")).await? {
            out.push((k, v));
        }
    }
    out.sort();
    Ok(out)
}

/// Why [`wait_connected`] gave up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitOutcome {
    /// Both ends are Connected.
    Connected(DeviceStatus),
    /// An end wrote an error node, or closed, or the device was removed:
    /// the status says which.
    Failed(DeviceStatus),
    /// Neither within the time given.
    TimedOut(DeviceStatus),
}

impl DeviceStatus {
    /// Both ends are Connected.
    pub fn is_connected(&self) -> bool {
        self.backend_state == NodeState::State(XenbusState::Connected)
            && self.frontend_state == NodeState::State(XenbusState::Connected)
    }

    /// The device cannot connect without help: an end wrote an error node,
    /// an end is Closing or Closed, a state node holds garbage, or both
    /// directories are gone.
    pub fn has_failed(&self) -> bool {
        let ended = |s: &NodeState| {
            matches!(
                s,
                NodeState::State(XenbusState::Closing | XenbusState::Closed) | NodeState::Bad(_)
            )
        };
        self.backend_error.is_some()
            || self.frontend_error.is_some()
            || ended(&self.backend_state)
            || ended(&self.frontend_state)
            || (self.backend_state == NodeState::Absent && self.frontend_state == NodeState::Absent)
    }
}

/// Waits until both ends of `id` are Connected, or it has failed (see
/// [`DeviceStatus::has_failed`]), or `timeout` passed; what `xl` does
/// after adding a device. Set up with watches on both directories and
/// both error nodes, so nothing is polled. Cancellation safe.
pub async fn wait_connected(
    xs: &XsClient,
    id: &DeviceId,
    timeout: Duration,
) -> Result<WaitOutcome, XenbusError> {
    use futures::StreamExt;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut events = futures::stream::SelectAll::new();
    for path in [
        id.backend_dir(),
        id.frontend_dir(),
        id.error_path(Side::Backend),
        id.error_path(Side::Frontend),
    ] {
        let w = xs
            .watch(&path)
            .await
            .map_err(XenbusError::xs("watch", &path))?;
        events.push(w);
    }
    loop {
        let status = device_status(xs, id.clone()).await?;
        if status.is_connected() {
            return Ok(WaitOutcome::Connected(status));
        }
        if status.has_failed() {
            return Ok(WaitOutcome::Failed(status));
        }
        match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                let path = id.backend_dir();
                return Err(XenbusError::xs("watch", &path)(XsError::Io {
                    op: "watch",
                    path: path.clone(),
                    source: std::io::ErrorKind::ConnectionAborted.into(),
                }));
            }
            Err(_) => return Ok(WaitOutcome::TimedOut(device_status(xs, id.clone()).await?)),
        }
    }
}

/// The lowest device number of `kind` for frontend `fe` that neither the
/// frontend's `device/<kind>` nor backend `be`'s `backend/<kind>/<fe>`
/// uses. (Another toolstack may take it before [`create_device`]; that one
/// then answers [`XenbusError::Exists`].)
pub async fn free_devid(
    xs: &XsClient,
    kind: &str,
    fe: DomId,
    be: DomId,
) -> Result<u32, XenbusError> {
    let mut used = BTreeSet::new();
    for p in [
        format!("/local/domain/{fe}/device/{kind}"),
        format!("/local/domain/{be}/backend/{kind}/{fe}"),
    ] {
        used.extend(
            kids(xs, &p)
                .await?
                .iter()
                .filter_map(|k| k.parse::<u32>().ok()),
        );
    }
    (0..=u32::MAX)
        .find(|n| !used.contains(n))
        .ok_or_else(|| XenbusError::BadParam {
            key: "devid".into(),
            why: format!("every device number of {kind} for domain {fe} is in use"),
        })
}

/// The device `<kind>/<fe>/<devid>` as XenStore knows it: the backend
/// domain is the frontend dir's `backend-id` (else its `backend` path),
/// else the one backend dir found for it, else `None` when there is no
/// such device (or several backends claim it: pass the backend then).
pub async fn find_device(
    xs: &XsClient,
    kind: &str,
    fe: DomId,
    devid: u32,
) -> Result<Option<DeviceId>, XenbusError> {
    let probe = DeviceId::new(kind, fe, 0, devid)?;
    let fe_dir = probe.frontend_dir();
    if read_opt(xs, &fe_dir).await?.is_some() {
        let be = backend_of(xs, &fe_dir).await?;
        return Ok(Some(DeviceId {
            backend: be,
            ..probe
        }));
    }
    let mut found = BTreeMap::new();
    for d in kids(xs, "/local/domain").await? {
        let dir = format!("/local/domain/{d}/{}", probe.backend_nodename());
        if let Ok(id) = DeviceId::from_backend_dir(&dir) {
            if read_opt(xs, &dir).await?.is_some() {
                found.insert(id.backend, id);
            }
        }
    }
    Ok(match found.len() {
        1 => found.into_values().next(),
        _ => None,
    })
}
