//! The frontend device trait. A device author writes what to do with a
//! connection; the daemon does the rest:
//!
//! ```text
//!   toolstack writes device/<kind>/<devid>   (backend-id, backend, state)
//!     daemon: Initialising; backend: InitWait (features)
//!     daemon: connect(conn) ... conn.share_ring() / conn.offer_stream()
//!             conn.ready().await -> keys published, Initialised ...
//!             backend Connected -> Connected: ready() returns
//!             serve until conn.stopped()
//!     backend closes or restarts: the daemon stops the connection, calls
//!     disconnect(), and connects again when the backend is back
//! ```

use std::sync::Arc;

use futures::future::BoxFuture;
use xenring::platform::Platform;
use xenring::xenbus::daemon::Daemon;
use xenring::xenbus::device::{DeviceError, DeviceInfo, FrontendConn};
use xenring::xenbus::paths::{DeviceId, Side};
use xenring::xenbus::task::{Conn, Driver};
use xenring::xenstore::XsClient;

/// A kind of frontend device.
pub trait FrontendDevice: Send + Sync + 'static {
    /// The device kind (the `<kind>` of `device/<kind>/<devid>`).
    fn kind(&self) -> &str;

    /// Runs one connection: share rings or offer a stream through `conn`
    /// (the backend's features are in `conn.peer_keys()`), call
    /// `conn.ready()`, serve until `conn.stopped()` or the backend goes.
    /// Return [`DeviceError::PeerGone`] when the backend went away (the
    /// daemon reconnects when it is back) and [`DeviceError::Failed`] for
    /// what the error node should say.
    fn connect(&self, conn: FrontendConn) -> BoxFuture<'static, Result<(), DeviceError>>;

    /// The connection ended and what it held is released.
    fn disconnect(&self, _id: &DeviceId) {}

    /// The device is gone for good (removed) or the daemon stopped.
    fn removed(&self, _id: &DeviceId) {}
}

struct Adapter(Arc<dyn FrontendDevice>);

impl Driver for Adapter {
    fn side(&self) -> Side {
        Side::Frontend
    }
    fn features(&self, _info: &DeviceInfo) -> Result<Vec<(String, String)>, DeviceError> {
        Ok(Vec::new())
    }
    fn start(&self, conn: Conn) -> BoxFuture<'static, Result<(), DeviceError>> {
        match conn {
            Conn::Frontend(c) => self.0.connect(c),
            Conn::Backend(_) => unreachable!("a frontend driver gets frontend conns"),
        }
    }
    fn disconnected(&self, id: &DeviceId) {
        self.0.disconnect(id)
    }
    fn finished(&self, id: &DeviceId) {
        self.0.removed(id)
    }
}

/// A frontend daemon running `devices` (one per kind) as this domain.
/// Run it with [`Daemon::run`].
pub fn daemon(
    xs: XsClient,
    platform: Arc<dyn Platform>,
    devices: Vec<Arc<dyn FrontendDevice>>,
) -> Daemon {
    let mut d = Daemon::new(xs, platform, Side::Frontend);
    for dev in devices {
        let kind = dev.kind().to_string();
        d = d.with_driver(&kind, Arc::new(Adapter(dev)));
    }
    d
}
