//! Counters of every connection of a `chan` device kind in one daemon
//! (both the frontend and the backend device keep one).

use std::sync::atomic::{AtomicU64, Ordering};

use super::ProxySummary;
use crate::stream::EventCounts;

/// Counters of all chan connections of one daemon.
#[derive(Debug, Default)]
pub struct ChanStats {
    /// Connections of devices (handshakes completed).
    pub connections: AtomicU64,
    /// Channels served.
    pub channels: AtomicU64,
    /// Bytes from the peer domain.
    pub bytes_in: AtomicU64,
    /// Bytes to the peer domain.
    pub bytes_out: AtomicU64,
    /// Event-channel notifications sent to the peer.
    pub events_sent: AtomicU64,
    /// Event-channel notifications received from the peer.
    pub events_received: AtomicU64,
}

impl ChanStats {
    /// Adds one finished connection: its proxy's summary and its stream's
    /// event counts.
    pub fn record(&self, summary: &ProxySummary, events: &EventCounts) {
        let add = |a: &AtomicU64, v: u64| a.fetch_add(v, Ordering::Relaxed);
        add(&self.channels, summary.connections);
        add(&self.bytes_in, summary.bytes_from_peer);
        add(&self.bytes_out, summary.bytes_to_peer);
        add(&self.events_sent, events.sent.load(Ordering::Relaxed));
        add(
            &self.events_received,
            events.received.load(Ordering::Relaxed),
        );
    }

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
