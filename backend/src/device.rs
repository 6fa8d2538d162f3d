//! The backend device trait. A device author writes what to publish and
//! what to do with a connection; the daemon does the rest:
//!
//! ```text
//!   toolstack writes backend/<kind>/<fe>/<devid>
//!     daemon: features() -> InitWait
//!     frontend: Initialised
//!     daemon: connect(conn) ... conn.map_ring() / conn.connect_stream()
//!             conn.ready().await -> Connected ... serve until conn.stopped()
//!     peer closes, dies, or the device is removed: the daemon stops the
//!     connection, then calls disconnect()
//! ```

use std::sync::Arc;

use futures::future::BoxFuture;
use xenring::platform::Platform;
use xenring::xenbus::daemon::Daemon;
use xenring::xenbus::device::{BackendConn, DeviceError, DeviceInfo};
use xenring::xenbus::paths::{DeviceId, Side};
use xenring::xenbus::task::{Conn, Driver};
use xenring::xenstore::XsClient;

/// A kind of backend device.
pub trait BackendDevice: Send + Sync + 'static {
    /// The device kind (the `<kind>` of `backend/<kind>/...`), e.g. `"chan"`.
    fn kind(&self) -> &str;

    /// Keys written into the backend directory before InitWait (the
    /// frontend reads them as features). None by default.
    fn features(&self, _info: &DeviceInfo) -> Result<Vec<(String, String)>, DeviceError> {
        Ok(Vec::new())
    }

    /// Runs one connection: map what the frontend offered, call
    /// `conn.ready()`, serve until `conn.stopped()` or the peer goes.
    /// Return [`DeviceError::PeerGone`] when the peer went away (the daemon
    /// then waits for it to come back) and [`DeviceError::Failed`] for what
    /// the error node should say.
    fn connect(&self, conn: BackendConn) -> BoxFuture<'static, Result<(), DeviceError>>;

    /// The connection ended and what it held is released.
    fn disconnect(&self, _id: &DeviceId) {}

    /// The device is gone for good (removed, or its frontend domain died).
    fn removed(&self, _id: &DeviceId) {}
}

struct Adapter(Arc<dyn BackendDevice>);

impl Driver for Adapter {
    fn side(&self) -> Side {
        Side::Backend
    }
    fn features(&self, info: &DeviceInfo) -> Result<Vec<(String, String)>, DeviceError> {
        self.0.features(info)
    }
    fn start(&self, conn: Conn) -> BoxFuture<'static, Result<(), DeviceError>> {
        match conn {
            Conn::Backend(c) => self.0.connect(c),
            Conn::Frontend(_) => unreachable!("a backend driver gets backend conns"),
        }
    }
    fn disconnected(&self, id: &DeviceId) {
        self.0.disconnect(id)
    }
    fn finished(&self, id: &DeviceId) {
        self.0.removed(id)
    }
}

/// A backend daemon serving `devices` (one per kind) as this domain.
/// Run it with [`Daemon::run`].
pub fn daemon(
    xs: XsClient,
    platform: Arc<dyn Platform>,
    devices: Vec<Arc<dyn BackendDevice>>,
) -> Daemon {
    let mut d = Daemon::new(xs, platform, Side::Backend);
    for dev in devices {
        let kind = dev.kind().to_string();
        d = d.with_driver(&kind, Arc::new(Adapter(dev)));
    }
    d
}
