//! The two ends of a vchan: a server lays out a fresh control page, a client
//! attaches to one; both then read one ring and write the other.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::byte_ring::{Geometry, MappedMemory, Shared};
use super::control::{placement, ControlPage, Layout, PeerState, RingId, RingLayout, Side};
use super::marker::{MarkerSpot, MARKER_ALIVE};
use super::{Consumer, NotifyNeeded, Producer, RingStats, StreamError};
use crate::abi::grant::GrantRef;
use crate::abi::vchan::{RingPlacement, VCHAN_LIVE_CONNECTED, VCHAN_NOTIFY_WRITE};
use crate::shm::Protection;

/// One ring as an end sets it up: its layout and, for orders of 12 and
/// more, the memory its pages are mapped at.
pub struct RingSetup {
    layout: RingLayout,
    memory: Option<Box<dyn MappedMemory>>,
}

impl fmt::Debug for RingSetup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingSetup")
            .field("layout", &self.layout)
            .field("memory", &self.memory)
            .finish()
    }
}

impl RingSetup {
    /// A ring of order 10 or 11, inside the control page.
    pub fn in_page(order: u16) -> RingSetup {
        RingSetup {
            layout: RingLayout {
                order,
                grants: Vec::new(),
            },
            memory: None,
        }
    }

    /// A ring of order 12 to 20 in `2^(order - 12)` pages with references
    /// `grants`, mapped contiguously as `memory` (exactly `2^order` bytes).
    pub fn pages(order: u16, grants: Vec<GrantRef>, memory: impl MappedMemory) -> RingSetup {
        RingSetup {
            layout: RingLayout { order, grants },
            memory: Some(Box::new(memory)),
        }
    }

    /// A ring described by `layout` (as [`ControlPage::read_layout`]
    /// returned it), with `memory` for its pages when it has any.
    pub fn new(layout: RingLayout, memory: Option<Box<dyn MappedMemory>>) -> RingSetup {
        RingSetup { layout, memory }
    }

    /// The layout.
    pub fn layout(&self) -> &RingLayout {
        &self.layout
    }
}

/// One end of a vchan: reads its receive ring, writes its transmit ring.
/// Split it with [`Vchan::into_split`] to use the halves independently.
#[derive(Debug)]
pub struct Vchan {
    rx: Consumer,
    tx: Producer,
}

impl Vchan {
    /// Sets up a server end: checks the layout and memory, then lays out
    /// the fresh control page as libxenvchan's server does (page zeroed,
    /// orders, grants, `cli_notify` = wake-on-write, `cli_live` = 2,
    /// `srv_live` = 1), plus the server's clean-close marker 1
    /// ([`MarkerSpot`]). Advertise the page in XenStore afterwards.
    ///
    /// `left` is the ring the server reads, `right` the one it writes.
    pub fn server_init(
        control: impl MappedMemory,
        left: RingSetup,
        right: RingSetup,
    ) -> Result<Vchan, StreamError> {
        let (shared, layout, geos) = build(Side::Server, Box::new(control), left, right)?;
        shared.control().init_server(&layout);
        Ok(Vchan::from_parts(shared, geos, 0, 0))
    }

    /// Attaches a client end to a control page a server laid out. Read the
    /// layout with [`ControlPage::read_layout`], map the rings' grants, and
    /// pass the same layouts back here with the mappings; nothing of the
    /// layout is read from the page again.
    ///
    /// The indexes found are checked, then the client says it is there as
    /// libxenvchan's does (`srv_notify` = wake-on-write, `cli_live` = 1),
    /// after setting its clean-close marker to 1 ([`MarkerSpot`]).
    /// Send the server one event afterwards: it waits for it.
    pub fn client_attach(
        control: impl MappedMemory,
        left: RingSetup,
        right: RingSetup,
    ) -> Result<Vchan, StreamError> {
        let (shared, _, geos) = build(Side::Client, Box::new(control), left, right)?;
        let ctrl = shared.control();
        // The server may already have written to the right ring; start from
        // whatever the page holds, after checking it like any peer index.
        // Acquire on the server's indexes as in every step (see byte_ring).
        let left_prod = ctrl.prod(RingId::Left).load(Ordering::Relaxed);
        let left_cons = ctrl.cons(RingId::Left).load(Ordering::Acquire);
        let right_cons = ctrl.cons(RingId::Right).load(Ordering::Relaxed);
        let right_prod = ctrl.prod(RingId::Right).load(Ordering::Acquire);
        for (geo, cons, prod) in [
            (geos[0], left_cons, left_prod),
            (geos[1], right_cons, right_prod),
        ] {
            if prod.wrapping_sub(cons) > geo.size {
                return Err(StreamError::CorruptIndex {
                    ring: geo.ring,
                    cons,
                    prod,
                    size: geo.size,
                });
            }
        }
        ctrl.notify(Side::Server)
            .store(VCHAN_NOTIFY_WRITE, Ordering::Relaxed);
        if let Some(spot) = shared.markers() {
            ctrl.marker(spot, Side::Client)
                .store(MARKER_ALIVE, Ordering::Relaxed);
        }
        // Release: a server that sees us connected (acquire) also sees the
        // request and the marker above.
        ctrl.live(Side::Client)
            .store(VCHAN_LIVE_CONNECTED, Ordering::Release);
        Ok(Vchan::from_parts(shared, geos, right_cons, left_prod))
    }

    fn from_parts(shared: Arc<Shared>, geos: [Geometry; 2], rx_cons: u32, tx_prod: u32) -> Vchan {
        let side = shared.side();
        let [left, right] = geos;
        let (rx_geo, tx_geo) = match side {
            Side::Server => (left, right),
            Side::Client => (right, left),
        };
        Vchan {
            rx: Consumer::new(shared.clone(), rx_geo, rx_cons),
            tx: Producer::new(shared, tx_geo, tx_prod),
        }
    }

    /// Which end this is.
    pub fn side(&self) -> Side {
        match self.tx.ring() {
            RingId::Right => Side::Server,
            RingId::Left => Side::Client,
        }
    }

    /// See [`Consumer::read`].
    pub fn read(&mut self, buf: &mut [u8]) -> Result<(usize, NotifyNeeded), StreamError> {
        self.rx.read(buf)
    }

    /// See [`Producer::write`].
    pub fn write(&mut self, data: &[u8]) -> Result<(usize, NotifyNeeded), StreamError> {
        self.tx.write(data)
    }

    /// Bytes waiting in the receive ring ([`Consumer::readable`]).
    pub fn readable(&self) -> Result<usize, StreamError> {
        self.rx.readable()
    }

    /// Free space in the transmit ring ([`Producer::writable`]).
    pub fn writable(&self) -> Result<usize, StreamError> {
        self.tx.writable()
    }

    /// See [`Consumer::at_eof`].
    pub fn at_eof(&self) -> Result<bool, StreamError> {
        self.rx.at_eof()
    }

    /// The peer's live byte, and its marker when it is 0.
    pub fn peer_state(&self) -> Result<PeerState, StreamError> {
        self.rx.peer_state()
    }

    /// Closes in order: our clean-close marker 2, then our live byte 0. Yes
    /// the first time: send the peer an event so that it notices.
    pub fn close(&self) -> NotifyNeeded {
        self.rx.close()
    }

    /// Counters of the receive and transmit halves.
    pub fn stats(&self) -> (RingStats, RingStats) {
        (self.rx.stats(), self.tx.stats())
    }

    /// The receive half.
    pub fn reader(&mut self) -> &mut Consumer {
        &mut self.rx
    }

    /// The transmit half.
    pub fn writer(&mut self) -> &mut Producer {
        &mut self.tx
    }

    /// The two halves, which keep the memory mapped until both are dropped.
    pub fn into_split(self) -> (Consumer, Producer) {
        (self.rx, self.tx)
    }
}

/// Checks the control region, the layout and each ring's memory, and
/// builds what the halves share. Geometries are `[left, right]`.
fn build(
    side: Side,
    control: Box<dyn MappedMemory>,
    left: RingSetup,
    right: RingSetup,
) -> Result<(Arc<Shared>, Layout, [Geometry; 2]), StreamError> {
    ControlPage::new(control.region())?;
    let layout = Layout {
        left: left.layout,
        right: right.layout,
    };
    layout.check()?;
    let mut geos = Vec::with_capacity(2);
    for (ring, memory) in [(RingId::Left, &left.memory), (RingId::Right, &right.memory)] {
        let order = layout.ring(ring).order;
        let size = 1u32 << order;
        let base = match placement(ring, order)? {
            RingPlacement::InPage { offset } => {
                if memory.is_some() {
                    return Err(bad(ring, format!("order {order} lives in the control page, but separate memory was given")));
                }
                offset
            }
            RingPlacement::Pages { .. } => {
                let Some(m) = memory else {
                    return Err(bad(
                        ring,
                        format!("order {order} needs the memory of its pages, none was given"),
                    ));
                };
                let region = m.region();
                if region.len() != size as usize {
                    return Err(bad(
                        ring,
                        format!(
                            "order {order} needs {size} bytes of memory, got {}",
                            region.len()
                        ),
                    ));
                }
                if ring == side.tx_ring() && region.protection() != Protection::ReadWrite {
                    return Err(bad(
                        ring,
                        format!("the {side} writes this ring, but its memory is mapped read-only"),
                    ));
                }
                0
            }
        };
        geos.push(Geometry { ring, size, base });
    }
    let geos = [geos[0], geos[1]];
    let markers = MarkerSpot::for_layout(&layout);
    let shared = Shared::new(side, control, left.memory, right.memory, markers);
    Ok((Arc::new(shared), layout, geos))
}

fn bad(ring: RingId, why: String) -> StreamError {
    StreamError::BadSetup { ring, why }
}

#[cfg(test)]
impl Vchan {
    /// Moves this end's own indexes (receive cons, transmit prod) to
    /// `index`, before any traffic, so tests can cross u32::MAX.
    pub(crate) fn seek_for_test(&mut self, index: u32) {
        self.rx.seek_for_test(index);
        self.tx.seek_for_test(index);
    }
}
