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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::future::BoxFuture;
use xenring::chan::{serve_incoming, ChanError, Mux, MuxConfig, Role, Target};
use xenring::xenbus::device::{BackendConn, DeviceError, DeviceInfo};

use crate::device::BackendDevice;

/// Counters of all chan connections of one daemon.
#[derive(Debug, Default)]
pub struct ChanStats {
    /// Connections of devices (handshakes completed).
    pub connections: AtomicU64,
    /// Channels served.
    pub channels: AtomicU64,
    /// Bytes from the frontend to targets.
    pub bytes_in: AtomicU64,
    /// Bytes from targets to the frontend.
    pub bytes_out: AtomicU64,
    /// Event-channel notifications sent to frontends.
    pub events_sent: AtomicU64,
    /// Event-channel notifications received from frontends.
    pub events_received: AtomicU64,
}

impl ChanStats {
    /// One line of `key=value` pairs.
    pub fn line(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "connections={} channels={} bytes_in={} bytes_out={} events_sent={} events_received={}",
            g(&self.connections),
            g(&self.channels),
            g(&self.bytes_in),
            g(&self.bytes_out),
            g(&self.events_sent),
            g(&self.events_received)
        )
    }
}

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
            stats
                .channels
                .fetch_add(summary.connections, Ordering::Relaxed);
            stats
                .bytes_in
                .fetch_add(summary.bytes_from_peer, Ordering::Relaxed);
            stats
                .bytes_out
                .fetch_add(summary.bytes_to_peer, Ordering::Relaxed);
            stats
                .events_sent
                .fetch_add(events.sent.load(Ordering::Relaxed), Ordering::Relaxed);
            stats
                .events_received
                .fetch_add(events.received.load(Ordering::Relaxed), Ordering::Relaxed);
            match summary.ended_by {
                None | Some(ChanError::Closed) => Ok(()),
                Some(e) => Err(DeviceError::PeerGone(format!("device {}: {e}", conn.id()))),
            }
        })
    }
}
