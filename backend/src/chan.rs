//! The `chan` backend: the frontend offers a vchan byte stream, this end
//! connects to it and multiplexes channels over it ([`xenring::chan`]);
//! each channel the frontend opens is connected to the device's `target`
//! (a backend key the toolstack writes: `unix:/path` or `tcp:host:port`).
//!
//! ```text
//!   frontend socket client ==channel==> [this backend] --connect--> target
//! ```
//!
//! Counters of every connection so far are in [`ChanStats`].

use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::future::BoxFuture;
use xenring::chan::{serve_incoming, ChanError, ChanStats, Mux, MuxConfig, Role, Target};
use xenring::xenbus::device::{BackendConn, DeviceError, DeviceInfo};

use crate::device::BackendDevice;

/// The chan backend device.
#[derive(Debug, Default)]
pub struct ChanBackend {
    stats: Arc<ChanStats>,
}

impl ChanBackend {
    /// A chan backend with zeroed counters.
    pub fn new() -> ChanBackend {
        ChanBackend::default()
    }

    /// Counters of every connection so far.
    pub fn stats(&self) -> Arc<ChanStats> {
        self.stats.clone()
    }
}

fn target_of(info: &DeviceInfo) -> Result<Target, DeviceError> {
    info.param("target")?
        .parse::<Target>()
        .map_err(|e| DeviceError::failed(format!("device {}: {e}", info.id)))
}

impl BackendDevice for ChanBackend {
    fn kind(&self) -> &str {
        "chan"
    }

    fn features(&self, info: &DeviceInfo) -> Result<Vec<(String, String)>, DeviceError> {
        // A bad target fails the device now, before the frontend connects.
        target_of(info)?;
        Ok(vec![("feature-chan-mux".into(), "1".into())])
    }

    fn connect(&self, mut conn: BackendConn) -> BoxFuture<'static, Result<(), DeviceError>> {
        let stats = self.stats.clone();
        Box::pin(async move {
            let target = target_of(conn.info())?;
            conn.check_protocol()?;
            let stream = conn.connect_stream()?;
            let events = stream.event_counts();
            conn.ready().await?;
            stats.connections.fetch_add(1, Ordering::Relaxed);
            let (handle, incoming) = Mux::start(stream, MuxConfig::new(Role::Server));
            let summary = serve_incoming(incoming, target, conn.stop_token()).await;
            drop(handle);
            stats.record(&summary, &events);
            match summary.ended_by {
                None | Some(ChanError::Closed) => Ok(()),
                Some(e) => Err(DeviceError::PeerGone(format!("device {}: {e}", conn.id()))),
            }
        })
    }
}
