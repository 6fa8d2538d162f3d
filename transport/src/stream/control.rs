//! The control page of a vchan as shared memory: every field reached through
//! an atomic of its own size, and the ring layout (orders and `grants[]`)
//! read from it once, copied, and validated.
//!
//! The byte layout is [`crate::abi::vchan`]'s; the offsets here are checked
//! against that view by the golden-byte tests.

use std::fmt;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU8, Ordering};

use super::marker::{MarkerSpot, MARKER_ALIVE};
use super::StreamError;
use crate::abi::grant::GrantRef;
use crate::abi::vchan::{
    grant_offset, ring_placement, RingPlacement, CONTROL_PAGE_SIZE, GRANTS_OFFSET, MAX_ORDER,
    MIN_ORDER, VCHAN_LIVE_CONNECTED, VCHAN_LIVE_WAITING, VCHAN_NOTIFY_WRITE,
};
use crate::shm::{Protection, Region};

/// Byte offsets of the header fields (`struct vchan_interface`).
mod off {
    pub const LEFT_CONS: usize = 0;
    pub const LEFT_PROD: usize = 4;
    pub const RIGHT_CONS: usize = 8;
    pub const RIGHT_PROD: usize = 12;
    pub const LEFT_ORDER: usize = 16;
    pub const RIGHT_ORDER: usize = 18;
    pub const CLI_LIVE: usize = 20;
    pub const SRV_LIVE: usize = 21;
    pub const CLI_NOTIFY: usize = 22;
    pub const SRV_NOTIFY: usize = 23;
}

/// Which end of the channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The end that allocates and grants the pages (reads left, writes
    /// right).
    Server,
    /// The end that maps them (writes left, reads right).
    Client,
}

impl Side {
    /// The other end.
    pub fn peer(self) -> Side {
        match self {
            Side::Server => Side::Client,
            Side::Client => Side::Server,
        }
    }

    /// The ring this side writes.
    pub fn tx_ring(self) -> RingId {
        match self {
            Side::Server => RingId::Right,
            Side::Client => RingId::Left,
        }
    }

    /// The ring this side reads.
    pub fn rx_ring(self) -> RingId {
        self.peer().tx_ring()
    }

    /// Offset of this side's live byte (`srv_live` or `cli_live`); also the
    /// byte an unmap notification should clear when this side goes away.
    pub fn live_offset(self) -> usize {
        match self {
            Side::Server => off::SRV_LIVE,
            Side::Client => off::CLI_LIVE,
        }
    }

    /// Offset of this side's notify byte (`srv_notify` or `cli_notify`): the
    /// peer sets bits in it to ask for events, this side fetch-and-clears it
    /// after moving data.
    pub fn notify_offset(self) -> usize {
        match self {
            Side::Server => off::SRV_NOTIFY,
            Side::Client => off::CLI_NOTIFY,
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Server => "server",
            Side::Client => "client",
        })
    }
}

/// One of the two byte rings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RingId {
    /// Client -> server data.
    Left,
    /// Server -> client data.
    Right,
}

impl RingId {
    /// Offset of the ring's consumer index.
    pub fn cons_offset(self) -> usize {
        match self {
            RingId::Left => off::LEFT_CONS,
            RingId::Right => off::RIGHT_CONS,
        }
    }

    /// Offset of the ring's producer index.
    pub fn prod_offset(self) -> usize {
        match self {
            RingId::Left => off::LEFT_PROD,
            RingId::Right => off::RIGHT_PROD,
        }
    }

    /// Offset of the ring's order.
    pub fn order_offset(self) -> usize {
        match self {
            RingId::Left => off::LEFT_ORDER,
            RingId::Right => off::RIGHT_ORDER,
        }
    }

    /// The side that writes this ring.
    pub fn producer(self) -> Side {
        match self {
            RingId::Left => Side::Client,
            RingId::Right => Side::Server,
        }
    }
}

impl fmt::Display for RingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RingId::Left => "left (client to server)",
            RingId::Right => "right (server to client)",
        })
    }
}

/// What the peer's live byte says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerState {
    /// 2: the client has not connected yet (only a server sees this).
    NotYetConnected,
    /// 1: the peer is there.
    Connected,
    /// 0: the peer closed the channel; or died, if it is a libxenvchan
    /// peer (or the layout has no room for the clean-close marker), whose
    /// death looks the same.
    Closed,
    /// 0 from a peer whose clean-close marker showed 1 but is not 2: it
    /// died (its unmap notification cleared the byte) or gave up on a
    /// fault. See [`MarkerSpot`].
    Died,
}

impl PeerState {
    pub(crate) fn from_byte(v: u8) -> Result<PeerState, StreamError> {
        match v {
            0 => Ok(PeerState::Closed),
            1 => Ok(PeerState::Connected),
            2 => Ok(PeerState::NotYetConnected),
            value => Err(StreamError::BadLive { value }),
        }
    }
}

/// The shape of one ring: its order and, for orders of 12 and more, the
/// grant references of its pages.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RingLayout {
    /// Ring size is `2^order` bytes (10..=20).
    pub order: u16,
    /// One grant reference per page (`2^(order - 12)` of them); empty for
    /// the in-page orders 10 and 11.
    pub grants: Vec<GrantRef>,
}

impl RingLayout {
    /// Size of the ring in bytes.
    pub fn size(&self) -> usize {
        1usize << self.order
    }
}

/// The shape of both rings: what a server writes into a fresh control page
/// and what a client copies out of it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Layout {
    /// Client -> server.
    pub left: RingLayout,
    /// Server -> client.
    pub right: RingLayout,
}

impl Layout {
    /// The ring `ring`.
    pub fn ring(&self, ring: RingId) -> &RingLayout {
        match ring {
            RingId::Left => &self.left,
            RingId::Right => &self.right,
        }
    }

    /// Checks what libxenvchan's header demands: orders in 10..=20, at most
    /// one ring per in-page slot, `2^(order - 12)` grants for a paged ring,
    /// and a grant list that ends before any in-page ring starts.
    pub fn check(&self) -> Result<(), StreamError> {
        let mut in_page = Vec::with_capacity(2);
        for ring in [RingId::Left, RingId::Right] {
            let r = self.ring(ring);
            let placement = placement(ring, r.order)?;
            if r.grants.len() != placement.grant_count() {
                return Err(StreamError::BadSetup {
                    ring,
                    why: format!(
                        "order {} needs {} grant references, got {}",
                        r.order,
                        placement.grant_count(),
                        r.grants.len()
                    ),
                });
            }
            if let RingPlacement::InPage { offset } = placement {
                in_page.push((ring, offset));
            }
        }
        if let [(_, a), (_, b)] = in_page[..] {
            if a == b {
                return Err(StreamError::InPageClash {
                    order: self.left.order,
                    offset: a,
                });
            }
        }
        let count = self.left.grants.len() + self.right.grants.len();
        // At most 2 * 256 grants: 24 + 2048 bytes, always inside the page.
        let end = grant_offset(count).expect("at most 512 grants");
        for (ring, offset) in in_page {
            if end > offset {
                return Err(StreamError::GrantsOverlapRing {
                    count,
                    end,
                    ring,
                    offset,
                });
            }
        }
        Ok(())
    }
}

/// Where ring `ring` of order `order` lives, or [`StreamError::BadOrder`].
pub(crate) fn placement(ring: RingId, order: u16) -> Result<RingPlacement, StreamError> {
    ring_placement(order).map_err(|_| StreamError::BadOrder { ring, order })
}

/// A view of a control page in shared memory. Every field is reached
/// through an atomic; the caller names the ordering.
#[derive(Debug, Clone, Copy)]
pub struct ControlPage<'a> {
    region: &'a Region,
}

impl<'a> ControlPage<'a> {
    /// A view of the control page at the start of `region`, which must hold
    /// at least one page and be writable (both ends write indexes and notify
    /// bits).
    pub fn new(region: &'a Region) -> Result<ControlPage<'a>, StreamError> {
        if region.len() < CONTROL_PAGE_SIZE {
            return Err(StreamError::BadControlPage {
                why: format!(
                    "region of {} bytes is smaller than a {CONTROL_PAGE_SIZE}-byte page",
                    region.len()
                ),
            });
        }
        if region.protection() != Protection::ReadWrite {
            return Err(StreamError::BadControlPage {
                why: "region is mapped read-only".into(),
            });
        }
        Ok(ControlPage { region })
    }

    /// The region the view is over.
    pub fn region(&self) -> &'a Region {
        self.region
    }

    /// Consumer index of `ring`.
    pub fn cons(&self, ring: RingId) -> &'a AtomicU32 {
        self.region.atomic_u32(ring.cons_offset())
    }

    /// Producer index of `ring`.
    pub fn prod(&self, ring: RingId) -> &'a AtomicU32 {
        self.region.atomic_u32(ring.prod_offset())
    }

    /// Order of `ring`.
    pub fn order(&self, ring: RingId) -> &'a AtomicU16 {
        self.region.atomic_u16(ring.order_offset())
    }

    /// Live byte of `side`.
    pub fn live(&self, side: Side) -> &'a AtomicU8 {
        self.region.atomic_u8(side.live_offset())
    }

    /// Clean-close marker byte of `side` at `spot` (see [`MarkerSpot`]).
    pub fn marker(&self, spot: MarkerSpot, side: Side) -> &'a AtomicU8 {
        self.region.atomic_u8(spot.offset(side))
    }

    /// Notify byte of `side` (see [`Side::notify_offset`]).
    pub fn notify(&self, side: Side) -> &'a AtomicU8 {
        self.region.atomic_u8(side.notify_offset())
    }

    /// `grants[i]`, if it lies inside the page.
    pub fn grant(&self, i: usize) -> Option<&'a AtomicU32> {
        let at = grant_offset(i)?;
        (at.checked_add(4)? <= CONTROL_PAGE_SIZE).then(|| self.region.atomic_u32(at))
    }

    /// Copies the layout out of the page (orders, then as many grants as
    /// they call for) and checks it. Each field is read once; the copy is
    /// what the caller maps and uses, so a server changing the page later
    /// cannot make the two disagree.
    pub fn read_layout(&self) -> Result<Layout, StreamError> {
        // Acquire pairs with the server's release store of srv_live at the
        // end of its set-up: the orders and grants it wrote before are seen.
        self.live(Side::Server).load(Ordering::Acquire);
        let left_order = self.order(RingId::Left).load(Ordering::Relaxed);
        let right_order = self.order(RingId::Right).load(Ordering::Relaxed);
        let left_n = placement(RingId::Left, left_order)?.grant_count();
        let right_n = placement(RingId::Right, right_order)?.grant_count();
        // Both counts are at most 256, so every grant lies inside the page.
        let mut grants = (0..left_n + right_n).map(|i| {
            self.grant(i)
                .expect("at most 512 grants fit in the page")
                .load(Ordering::Relaxed)
        });
        let layout = Layout {
            left: RingLayout {
                order: left_order,
                grants: grants.by_ref().take(left_n).collect(),
            },
            right: RingLayout {
                order: right_order,
                grants: grants.collect(),
            },
        };
        layout.check()?;
        Ok(layout)
    }

    /// Lays out a fresh control page as libxenvchan's server does: the whole
    /// page zeroed, orders and grant references written, `cli_notify` set to
    /// "wake me on write" (the server wants to hear of the client's first
    /// data), `cli_live` 2 (not yet connected), the server's clean-close
    /// marker 1 (the one byte libxenvchan's server does not write, see
    /// [`MarkerSpot`]), and `srv_live` 1 last.
    ///
    /// The page must not be visible to the client yet (it learns the grant
    /// reference from XenStore afterwards).
    pub(crate) fn init_server(&self, layout: &Layout) {
        // Not yet shared with anyone: a plain fill cannot race.
        self.region.fill(0, CONTROL_PAGE_SIZE, 0);
        self.order(RingId::Left)
            .store(layout.left.order, Ordering::Relaxed);
        self.order(RingId::Right)
            .store(layout.right.order, Ordering::Relaxed);
        for (i, g) in layout
            .left
            .grants
            .iter()
            .chain(&layout.right.grants)
            .enumerate()
        {
            self.grant(i)
                .expect("checked layout: grants fit in the page")
                .store(*g, Ordering::Relaxed);
        }
        self.notify(Side::Client)
            .store(VCHAN_NOTIFY_WRITE, Ordering::Relaxed);
        self.live(Side::Client)
            .store(VCHAN_LIVE_WAITING, Ordering::Relaxed);
        if let Some(spot) = MarkerSpot::for_layout(layout) {
            self.marker(spot, Side::Server)
                .store(MARKER_ALIVE, Ordering::Relaxed);
        }
        // Release: a client that sees srv_live == 1 (acquire, in
        // read_layout) also sees the orders, grants and marker written
        // above.
        self.live(Side::Server)
            .store(VCHAN_LIVE_CONNECTED, Ordering::Release);
    }
}

const _: () = assert!(MIN_ORDER == 10 && MAX_ORDER == 20 && GRANTS_OFFSET == 24);
