//! The error type of the XenBus helpers and the toolstack.

use std::time::Duration;

use super::paths::DeviceId;
use crate::abi::grant::DomId;
use crate::abi::xenbus::XenbusState;
use crate::xenstore::XsError;

/// Longest excerpt of a peer's value kept in an error (the value is the
/// peer's, so anything may be there).
const VALUE_EXCERPT: usize = 64;

/// What a XenBus helper, the device toolstack or a device author's key
/// parser reports. Every variant names the path or the device.
#[derive(Debug, thiserror::Error)]
pub enum XenbusError {
    /// A XenStore operation failed (the inner error names the node and the
    /// server's answer).
    #[error("xenbus {op} {path}: {error}")]
    Xs {
        /// What the helper was doing (`switch-state`, `publish`, ...).
        op: &'static str,
        /// The device directory (or node) it was working on.
        path: String,
        /// The XenStore error.
        error: XsError,
    },
    /// The device directory no longer exists: the toolstack removed the
    /// device. Nothing was written (a removed device is never recreated).
    #[error("device directory {dir} is gone (the device was removed)")]
    Removed {
        /// The directory.
        dir: String,
    },
    /// A `state` node holds something that is not a XenBus state.
    #[error("bad xenbus state {value:?} in {path} (expected a number from 0 to 8)")]
    BadState {
        /// The `state` node.
        path: String,
        /// What it holds (at most 64 characters of it).
        value: String,
    },
    /// A device key is missing or does not parse (for device authors:
    /// `ring-ref`, `event-channel`, ...).
    #[error("device key {path}/{key} {}: {why}", show_value(.value))]
    BadKey {
        /// The device directory.
        path: String,
        /// The key.
        key: String,
        /// What it holds (at most 64 characters of it); `None` if missing.
        value: Option<String>,
        /// What is wrong.
        why: String,
    },
    /// A string that should name a device (a device directory, or
    /// `kind/frontend/devid`) does not.
    #[error("bad device path {path:?}: {why}")]
    BadPath {
        /// The string as given.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// A device parameter given to the toolstack cannot be written.
    #[error("bad device parameter {key:?}: {why}")]
    BadParam {
        /// The key as given.
        key: String,
        /// What is wrong.
        why: String,
    },
    /// The device exists already (one of its directories does).
    #[error("device {id} exists already ({dir} is there)")]
    Exists {
        /// The device.
        id: DeviceId,
        /// The directory found.
        dir: String,
    },
    /// Neither directory of the device exists.
    #[error("no device {id} (neither {} nor {} exists)", .id.frontend_dir(), .id.backend_dir())]
    NoDevice {
        /// The device.
        id: DeviceId,
    },
    /// A domain the device needs is not running (XenStore does not know it).
    #[error("domain {domid} is not running (it is not introduced to xenstore)")]
    NoDomain {
        /// The domain.
        domid: DomId,
    },
    /// The backend did not close the device in time; nothing was removed.
    #[error(
        "device {id}: backend still {} ({}) after {timeout:?}, not Closed; \
         nothing removed (force removes it anyway)",
        .state.name(), .state.raw()
    )]
    Stuck {
        /// The device.
        id: DeviceId,
        /// The backend's last state.
        state: XenbusState,
        /// How long the toolstack waited.
        timeout: Duration,
    },
    /// The watch behind a [`StateWatch`](super::StateWatch) ended (its
    /// XenStore client is gone).
    #[error("the state watch on {path} ended (its xenstore client is gone)")]
    WatchEnded {
        /// The watched `state` node.
        path: String,
    },
    /// The platform ended this domain's session (its domain was destroyed,
    /// or its host went away): a daemon stops with this.
    #[error("domain {domid} can no longer run devices: {error}")]
    PlatformEnded {
        /// Our domain.
        domid: DomId,
        /// What the platform said.
        error: crate::platform::PlatformError,
    },
    /// Another daemon serves these devices already, or its lock could not
    /// be taken.
    #[error("{side} {kind} devices of domain {domid}: {error}")]
    Instance {
        /// The device kind.
        kind: String,
        /// Our domain.
        domid: DomId,
        /// `backend` or `frontend`.
        side: &'static str,
        /// What the lock said.
        error: crate::instance::InstanceLockError,
    },
}

fn show_value(v: &Option<String>) -> String {
    match v {
        Some(v) => format!("= {v:?}"),
        None => "is missing".to_string(),
    }
}

/// At most [`VALUE_EXCERPT`] characters of a peer's value, for an error.
pub(crate) fn excerpt(v: &str) -> String {
    v.chars().take(VALUE_EXCERPT).collect()
}

impl XenbusError {
    /// True if the device's directory was removed (the device is going
    /// away; the caller should stop, not retry).
    pub fn is_removed(&self) -> bool {
        matches!(self, XenbusError::Removed { .. })
    }

    /// A closure turning an [`XsError`] into [`XenbusError::Xs`].
    pub(crate) fn xs<'a>(
        op: &'static str,
        path: &'a str,
    ) -> impl FnOnce(XsError) -> XenbusError + 'a {
        move |error| XenbusError::Xs {
            op,
            path: path.to_string(),
            error,
        }
    }
}
