//! What the async ring ends share: the error type, the [`Tagged`] trait
//! that matches responses to requests, the memory a ring lives in
//! ([`RingMemory`]), the liveness bytes, and the set-up helpers written
//! against the [`Platform`] traits.
//!
//! # Liveness bytes
//!
//! ring.h leaves bytes 20 to 63 of the shared header as padding. The async
//! ends use six of them, three per end:
//!
//! ```text
//!  offset  58        59        60        61        62        63
//!          front     back      front     back      front     back
//!          attached  attached  closed    closed    live      live
//! ```
//!
//! Each end, when it attaches, writes 1 into its live byte
//! ([`FRONT_LIVE_BYTE`], [`BACK_LIVE_BYTE`]), arranges an unmap
//! notification that clears it (0) and sends an event when its share or
//! mapping goes away or its domain dies, and then writes 1 into its
//! attached byte ([`FRONT_ATTACHED_BYTE`], [`BACK_ATTACHED_BYTE`]), which
//! nothing ever clears. An end closing in order writes 1 into its closed
//! byte ([`FRONT_CLOSED_BYTE`], [`BACK_CLOSED_BYTE`]) and notifies before
//! letting go of the pages. The closed byte is separate because the unmap
//! notification clears the live byte on an orderly release too (and the
//! simulated host, unlike Linux, adds notifications rather than replacing
//! them, so one cannot be cancelled).
//!
//! An end watches the peer's live byte only once the peer is known to take
//! part ("armed"): it has seen the peer's attached byte, or its live byte,
//! at 1. A peer written in C, which leaves the padding zero, is never taken
//! for dead. The attached byte is what makes a death seen late still count:
//! a peer that attached and died before this end first looked (a frontend
//! idle since before its backend connected, a backend that maps a ring
//! whose frontend is already gone) shows attached 1 and live 0, which is
//! "gone", where the live byte alone would look like a peer that never
//! joined. The attached byte is stored (Release) after the live byte and
//! loaded (Acquire) before it, so an end that sees "attached" also sees the
//! live byte's 1 or what replaced it. A hostile peer writing these bytes
//! can only make us close the ring.

use std::borrow::Borrow;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::RingError;
use crate::abi::blkif::{BlkifRequest, BlkifResponse};
use crate::abi::netif::{NetifRxRequest, NetifRxResponse, NetifTxRequest, NetifTxResponse};
use crate::platform::{
    Access, DomId, EventChannel, ForeignMapping, GrantRef, Platform, PlatformError, Port,
    SharedPages, UnmapNotify,
};
use crate::shm::Region;

/// Offset in the shared header of the frontend's liveness byte (in ring.h's
/// `__pad`).
pub const FRONT_LIVE_BYTE: usize = 62;
/// Offset in the shared header of the backend's liveness byte.
pub const BACK_LIVE_BYTE: usize = 63;
/// Offset in the shared header of the frontend's closed byte.
pub const FRONT_CLOSED_BYTE: usize = 60;
/// Offset in the shared header of the backend's closed byte.
pub const BACK_CLOSED_BYTE: usize = 61;
/// Offset in the shared header of the frontend's attached byte (set once
/// its live byte and unmap notification are in place; never cleared).
pub const FRONT_ATTACHED_BYTE: usize = 58;
/// Offset in the shared header of the backend's attached byte.
pub const BACK_ATTACHED_BYTE: usize = 59;

/// Liveness byte value: attached and running.
pub(super) const LIVE: u8 = 1;

/// Errors of the async ring ends. Cloneable: one error ends every
/// outstanding call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AsyncRingError {
    /// The sans-IO ring refused or closed (a peer that broke the protocol
    /// gives a fatal [`RingError`]).
    #[error(transparent)]
    Ring(#[from] RingError),
    /// A response carried an id that matches no outstanding request.
    #[error("ring front end (peer domain {peer}): response id {id:#x} matches no outstanding request; ring closed")]
    UnknownId {
        /// The peer domain.
        peer: DomId,
        /// The id found in the response.
        id: u64,
    },
    /// The peer's liveness byte was cleared: its share or mapping went away
    /// or its domain died.
    #[error("ring peer domain {peer} is gone (its liveness byte was cleared); ring closed")]
    PeerGone {
        /// The peer domain.
        peer: DomId,
    },
    /// The peer closed its end in order.
    #[error("ring peer domain {peer} closed its end")]
    PeerClosed {
        /// The peer domain.
        peer: DomId,
    },
    /// This end was closed (the handle dropped or `close` called).
    #[error("ring end shared with domain {peer} is closed")]
    Closed {
        /// The peer domain.
        peer: DomId,
    },
    /// A platform operation (event channel, grants) failed.
    #[error("ring with domain {peer}: {what}: {source}")]
    Platform {
        /// The peer domain.
        peer: DomId,
        /// What was attempted.
        what: &'static str,
        /// The platform's error.
        #[source]
        source: Arc<PlatformError>,
    },
}

impl AsyncRingError {
    pub(super) fn platform(peer: DomId, what: &'static str, e: PlatformError) -> Self {
        AsyncRingError::Platform {
            peer,
            what,
            source: Arc::new(e),
        }
    }
}

/// A request or response that carries an id: the async frontend
/// ([`super::RingClient`]) writes a fresh id into every request and matches
/// each response to its caller by the id the backend echoes.
pub trait Tagged {
    /// Ids are taken modulo `ID_MASK + 1` (a power of two): `u16` ids for
    /// netif. The ring must have fewer slots than ids.
    const ID_MASK: u64 = u64::MAX;
    /// The id.
    fn id(&self) -> u64;
    /// Sets the id.
    fn set_id(&mut self, id: u64);
}

macro_rules! tagged {
    ($view:ident, $size:literal, u64) => {
        impl Tagged for $view<[u8; $size]> {
            fn id(&self) -> u64 {
                $view::id(self)
            }
            fn set_id(&mut self, id: u64) {
                $view::set_id(self, id)
            }
        }
    };
    ($view:ident, $size:literal, u16) => {
        impl Tagged for $view<[u8; $size]> {
            const ID_MASK: u64 = u16::MAX as u64;
            fn id(&self) -> u64 {
                u64::from($view::id(self))
            }
            fn set_id(&mut self, id: u64) {
                // Masked by the caller; truncation keeps the low 16 bits.
                $view::set_id(self, id as u16)
            }
        }
    };
}

tagged!(BlkifRequest, 112, u64);
tagged!(BlkifResponse, 16, u64);
tagged!(NetifTxRequest, 12, u16);
tagged!(NetifTxResponse, 4, u16);
tagged!(NetifRxRequest, 8, u16);
tagged!(NetifRxResponse, 8, u16);

/// The pages a ring lives in: granted by us (frontend), mapped from the
/// peer (backend), or plain memory (tests).
#[derive(Debug)]
pub enum RingMemory {
    /// Our pages, granted to the peer.
    Shared(Box<dyn SharedPages>),
    /// The peer's pages, mapped.
    Mapped(Box<dyn ForeignMapping>),
    /// Memory with no platform behind it.
    Plain(Region),
}

impl RingMemory {
    /// Arranges (or with the default, cancels) the unmap notification.
    pub(super) fn set_unmap_notify(&mut self, n: UnmapNotify) -> crate::platform::Result<()> {
        match self {
            RingMemory::Shared(s) => s.set_unmap_notify(n),
            RingMemory::Mapped(m) => m.set_unmap_notify(n),
            RingMemory::Plain(_) => Ok(()),
        }
    }
}

impl Borrow<Region> for RingMemory {
    fn borrow(&self) -> &Region {
        match self {
            RingMemory::Shared(s) => s.memory(),
            RingMemory::Mapped(m) => m.memory(),
            RingMemory::Plain(r) => r,
        }
    }
}

/// What a frontend publishes for its backend (in XenStore: `ring-ref*`,
/// `ring-page-order`, `event-channel`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingEndpoint {
    /// The frontend's domain.
    pub domid: DomId,
    /// Its unbound event-channel port.
    pub port: Port,
    /// One grant reference per ring page.
    pub refs: Vec<GrantRef>,
}

/// Frontend set-up: shares `pages` zeroed pages with `peer` read-write and
/// allocates an unbound port for it. The caller initialises the ring in
/// the pages ([`super::RingClient::new`] does).
pub fn share_ring(
    p: &dyn Platform,
    peer: DomId,
    pages: usize,
) -> Result<(RingMemory, Box<dyn EventChannel>, RingEndpoint), AsyncRingError> {
    let share = p
        .share_pages(peer, pages, Access::ReadWrite)
        .map_err(|e| AsyncRingError::platform(peer, "share ring pages", e))?;
    let port = p
        .alloc_unbound_port(peer)
        .map_err(|e| AsyncRingError::platform(peer, "allocate ring event channel", e))?;
    let endpoint = RingEndpoint {
        domid: p.domid(),
        port: port.local_port(),
        refs: share.refs().to_vec(),
    };
    Ok((RingMemory::Shared(share), port, endpoint))
}

/// Backend set-up: maps the frontend's ring pages read-write and binds to
/// its port.
pub fn map_ring(
    p: &dyn Platform,
    front: &RingEndpoint,
) -> Result<(RingMemory, Box<dyn EventChannel>), AsyncRingError> {
    let peer = front.domid;
    let map = p
        .map_grants(peer, &front.refs, Access::ReadWrite)
        .map_err(|e| AsyncRingError::platform(peer, "map ring pages", e))?;
    let port = p
        .bind_interdomain(peer, front.port)
        .map_err(|e| AsyncRingError::platform(peer, "bind ring event channel", e))?;
    Ok((RingMemory::Mapped(map), port))
}

/// Reads one liveness byte (Acquire: pairs with the Release stores of
/// [`arm_own`]).
pub(super) fn live_byte(mem: &Region, offset: usize) -> u8 {
    mem.atomic_u8(offset).load(Ordering::Acquire)
}

/// Writes our live byte, arranges for it to be cleared (and the peer
/// notified) when our memory handle goes away, then sets our attached byte.
/// Attached is written last: a peer that sees it also sees the live byte's
/// 1 (or the 0 of our death), never the 0 from before we attached.
pub(super) fn arm_own(
    mem: &mut RingMemory,
    live: usize,
    attached: usize,
    port: Port,
    peer: DomId,
) -> Result<(), AsyncRingError> {
    Borrow::<Region>::borrow(mem)
        .atomic_u8(live)
        .store(LIVE, Ordering::Release);
    mem.set_unmap_notify(UnmapNotify {
        clear_byte: Some(live),
        event: Some(port),
    })
    .map_err(|e| AsyncRingError::platform(peer, "arm the unmap notification", e))?;
    // Release: the live byte's store is visible before this one.
    Borrow::<Region>::borrow(mem)
        .atomic_u8(attached)
        .store(LIVE, Ordering::Release);
    Ok(())
}

/// Orderly close of our end: set our closed byte (at `offset`), notify,
/// and release the memory (which clears our live byte) and the port.
pub(super) fn close_own(mem: RingMemory, offset: usize, channel: &dyn EventChannel) {
    // Release: whatever we wrote to the ring before closing is visible
    // before the peer sees "closed".
    Borrow::<Region>::borrow(&mem)
        .atomic_u8(offset)
        .store(1, Ordering::Release);
    if let Err(e) = channel.notify() {
        tracing::debug!(error = %e, "notifying the peer of the ring's close");
    }
    drop(mem);
}

/// What the peer's liveness byte says, given whether it was seen live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PeerState {
    /// Running, or not taking part in the liveness protocol.
    Running,
    /// Closed in order.
    Closed,
    /// Cleared: gone.
    Gone,
}

/// Tracks the peer's live, closed and attached bytes.
#[derive(Debug)]
pub(super) struct PeerWatch {
    live: usize,
    closed: usize,
    attached: usize,
    armed: bool,
}

impl PeerWatch {
    pub(super) fn new(live: usize, closed: usize, attached: usize) -> Self {
        PeerWatch {
            live,
            closed,
            attached,
            armed: false,
        }
    }

    pub(super) fn check(&mut self, mem: &Region) -> PeerState {
        if live_byte(mem, self.closed) != 0 {
            return PeerState::Closed;
        }
        // Attached before live (both Acquire): seeing attached means the
        // live byte read next is the peer's 1 or the 0 of its death.
        if live_byte(mem, self.attached) == LIVE {
            self.armed = true;
        }
        match live_byte(mem, self.live) {
            LIVE => {
                self.armed = true;
                PeerState::Running
            }
            _ if self.armed => PeerState::Gone,
            _ => PeerState::Running,
        }
    }
}
