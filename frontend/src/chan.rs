//! The `chan` frontend: offers a vchan byte stream to the backend and
//! exposes the device as a Unix socket, `<socket dir>/chan-<devid>.sock`;
//! each connection to it becomes one channel through the device
//! ([`xenring::chan`]), which the backend connects to its target.
//!
//! ```text
//!   client --unix--> chan-<devid>.sock ==channel==> backend --> target
//! ```
//!
//! The socket is bound once per device and kept across reconnections (a
//! backend restart): clients that connect meanwhile wait in the backlog
//! and are served once the device is connected again. It is removed with
//! the device.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use xenring::chan::{serve_listener, ChanError, ChanStats, Mux, MuxConfig, Role};
use xenring::xenbus::device::{DeviceError, FrontendConn};
use xenring::xenbus::paths::DeviceId;

use crate::device::FrontendDevice;

/// Ring sizes of the vchan: 2^16 bytes each way (16 granted pages each).
pub const RING_ORDER: u16 = 16;

/// The chan frontend device.
#[derive(Debug)]
pub struct ChanFrontend {
    dir: PathBuf,
    listeners: Mutex<HashMap<DeviceId, std::os::unix::net::UnixListener>>,
    stats: Arc<ChanStats>,
}

impl ChanFrontend {
    /// A chan frontend with its sockets in `dir` (created if missing).
    pub fn new(dir: &Path) -> io::Result<ChanFrontend> {
        std::fs::create_dir_all(dir).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("creating the socket directory {}: {e}", dir.display()),
            )
        })?;
        Ok(ChanFrontend {
            dir: dir.to_path_buf(),
            listeners: Mutex::new(HashMap::new()),
            stats: Arc::default(),
        })
    }

    /// The socket of device `devid`.
    pub fn socket_path(&self, devid: u32) -> PathBuf {
        self.dir.join(format!("chan-{devid}.sock"))
    }

    /// Counters of every connection so far.
    pub fn stats(&self) -> Arc<ChanStats> {
        self.stats.clone()
    }

    /// The device's listening socket, bound on first use; each connection
    /// gets its own handle on the same socket (a dup), so the socket and
    /// its backlog outlive connections.
    fn listener(&self, id: &DeviceId) -> Result<tokio::net::UnixListener, DeviceError> {
        let mut map = self.listeners.lock().expect("listeners lock");
        let path = self.socket_path(id.devid);
        let fail = |what: &str, e: io::Error| {
            DeviceError::failed(format!("device {id}: {what} {}: {e}", path.display()))
        };
        if !map.contains_key(id) {
            // A socket file left by a previous daemon is stale: we own the name.
            let _ = std::fs::remove_file(&path);
            let l =
                std::os::unix::net::UnixListener::bind(&path).map_err(|e| fail("binding", e))?;
            l.set_nonblocking(true).map_err(|e| fail("setting up", e))?;
            map.insert(id.clone(), l);
        }
        let dup = map[id].try_clone().map_err(|e| fail("duplicating", e))?;
        tokio::net::UnixListener::from_std(dup).map_err(|e| fail("registering", e))
    }
}

impl FrontendDevice for ChanFrontend {
    fn kind(&self) -> &str {
        "chan"
    }

    fn connect(&self, mut conn: FrontendConn) -> BoxFuture<'static, Result<(), DeviceError>> {
        let stats = self.stats.clone();
        let listener = self.listener(conn.id());
        Box::pin(async move {
            let listener = listener?;
            let pending = conn.offer_stream(RING_ORDER, RING_ORDER)?;
            conn.ready().await?;
            let stream = pending.accept().await?;
            let events = stream.event_counts();
            stats.connections.fetch_add(1, Ordering::Relaxed);
            let (handle, incoming) = Mux::start(stream, MuxConfig::new(Role::Client));
            drop(incoming);
            let summary = serve_listener(listener, handle, conn.stop_token()).await;
            stats.record(&summary, &events);
            match summary.ended_by {
                None | Some(ChanError::Closed) => Ok(()),
                Some(e) => Err(DeviceError::PeerGone(format!("device {}: {e}", conn.id()))),
            }
        })
    }

    fn removed(&self, id: &DeviceId) {
        if self
            .listeners
            .lock()
            .expect("listeners lock")
            .remove(id)
            .is_some()
        {
            let _ = std::fs::remove_file(self.socket_path(id.devid));
        }
    }
}
