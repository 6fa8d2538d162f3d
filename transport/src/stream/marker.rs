//! The clean-close marker: an extension of libxenvchan's layout that tells
//! an orderly close from a peer's death, in bytes of the control page that
//! libxenvchan never touches.
//!
//! In libxenvchan's layout both a close and a death end with the peer's
//! live byte at 0 and an event (a death through the unmap notification of
//! the dead side's mapping). So each xenring end also keeps a **marker
//! byte**:
//!
//! | value | meaning |
//! |---|---|
//! | 0 | never written: a libxenvchan peer (or an older xenring), or not attached yet |
//! | 1 | extension-aware and alive: written when the end sets its live byte to 1 |
//! | 2 | closed cleanly: written just before the end sets its live byte to 0 |
//!
//! A reader that finds the peer's live byte 0 then decides
//! ([`judge`]): marker 2 is an orderly close (end of stream after the
//! data); a marker that showed 1 (now or at an earlier look) but is not 2
//! is a death ([`PeerState::Died`]); a marker that never showed 1 is a
//! peer that does not know the extension, and 0 means the end of the
//! stream, as before. Values above 2 are a broken peer
//! ([`StreamError::BadMarker`]).
//!
//! # Where the bytes are
//!
//! Per layout ([`MarkerSpot::for_layout`]): the two bytes right after the
//! last `grants[]` entry, server's first, client's second, provided they
//! end before the first in-page ring (offset 1024 or 2048), or before the
//! end of the page when both rings live in granted pages. libxenvchan's
//! server zeroes the whole page at set-up and never writes there again, so
//! a libxenvchan peer leaves its byte at 0 and ignores ours. Every layout
//! [`Layout::check`] accepts has room (grants end on a multiple of 4 at
//! most at byte 24 + 4 * 128 = 536 below an order-10 ring, and at most at
//! 2072 otherwise), but should one not, [`MarkerSpot::for_layout`] gives
//! `None` and both ends fall back to libxenvchan's behaviour: every 0 is
//! the end of the stream.
//!
//! # Orderings
//!
//! * Close: the marker 2 is stored with Release, then the live byte 0 with
//!   Release. A reader that sees the marker 2 (acquire) also sees the data
//!   and indexes stored before it, so an end that dies between the two
//!   stores (its unmap notification writes the 0) still has its stream
//!   read to the end.
//! * Look: the peer's live byte is loaded (Acquire) before its marker
//!   (Acquire). A reader that sees the peer's 0 from a close then sees its
//!   marker 2 (the marker store happens before the live store it
//!   acquired); loading the marker first could see 1, then the 0, and
//!   report an orderly close as a death.
//! * Attach: the marker 1 is stored (Relaxed) before the live byte 1 is
//!   stored with Release, so a peer that sees us connected also sees the
//!   marker.

use super::control::{Layout, PeerState, Side};
use super::StreamError;
use crate::abi::vchan::{grant_offset, ring_placement, RingPlacement, CONTROL_PAGE_SIZE};

/// Marker value: extension-aware and alive.
pub const MARKER_ALIVE: u8 = 1;
/// Marker value: closed cleanly.
pub const MARKER_CLOSED: u8 = 2;

/// Where the two marker bytes sit in a layout's control page; always
/// inside the page, after the grants and before any in-page ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MarkerSpot {
    /// Offset of the server's byte; the client's follows it.
    offset: usize,
}

impl MarkerSpot {
    /// The spot for a layout [`Layout::check`] accepted, or `None` when it
    /// leaves no two free bytes (then the ends behave as libxenvchan's).
    pub fn for_layout(layout: &Layout) -> Option<MarkerSpot> {
        let count = layout.left.grants.len() + layout.right.grants.len();
        let grants_end = grant_offset(count)?;
        let limit = [&layout.left, &layout.right]
            .iter()
            .filter_map(|r| match ring_placement(r.order) {
                Ok(RingPlacement::InPage { offset }) => Some(offset),
                _ => None,
            })
            .fold(CONTROL_PAGE_SIZE, usize::min);
        MarkerSpot::between(grants_end, limit)
    }

    /// Two bytes at `start` if they end at or before `limit` (and inside
    /// the page).
    pub(crate) fn between(start: usize, limit: usize) -> Option<MarkerSpot> {
        let end = start.checked_add(2)?;
        (end <= limit.min(CONTROL_PAGE_SIZE)).then_some(MarkerSpot { offset: start })
    }

    /// Offset of `side`'s marker byte in the control page.
    pub fn offset(self, side: Side) -> usize {
        match side {
            Side::Server => self.offset,
            Side::Client => self.offset + 1,
        }
    }
}

/// What the peer's live byte and marker say. `marker` is `None` when the
/// layout has no spot; `was_aware` is whether the marker ever showed 1 or 2
/// before. Returns the state and whether the peer is known to be
/// extension-aware from now on.
pub(crate) fn judge(
    live: u8,
    marker: Option<u8>,
    was_aware: bool,
) -> Result<(PeerState, bool), StreamError> {
    let state = PeerState::from_byte(live)?;
    let Some(m) = marker else {
        return Ok((state, false));
    };
    let aware = match m {
        0 => was_aware,
        MARKER_ALIVE | MARKER_CLOSED => true,
        value => return Err(StreamError::BadMarker { value }),
    };
    let state = match state {
        PeerState::Closed if aware && m != MARKER_CLOSED => PeerState::Died,
        s => s,
    };
    Ok((state, aware))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::RingLayout;

    fn layout(lo: u16, ro: u16) -> Layout {
        let ring = |order: u16| RingLayout {
            order,
            grants: vec![1; if order >= 12 { 1 << (order - 12) } else { 0 }],
        };
        Layout {
            left: ring(lo),
            right: ring(ro),
        }
    }

    #[test]
    fn spots_sit_after_the_grants_and_before_the_first_in_page_ring() {
        for (lo, ro, at) in [
            (10, 11, 24),               // no grants
            (11, 10, 24),               //
            (12, 10, 28),               // one grant, ring at 1024
            (19, 10, 24 + 4 * 128),     // the most before 1024
            (11, 20, 24 + 4 * 256),     // the most before 2048
            (20, 20, 24 + 4 * 512),     // no in-page ring: up to 4096
            (13, 14, 24 + 4 * (2 + 4)), //
        ] {
            let l = layout(lo, ro);
            l.check().unwrap();
            let spot = MarkerSpot::for_layout(&l).unwrap();
            assert_eq!(spot.offset(Side::Server), at, "orders {lo}/{ro}");
            assert_eq!(spot.offset(Side::Client), at + 1, "orders {lo}/{ro}");
        }
    }

    #[test]
    fn every_accepted_layout_has_a_spot_clear_of_grants_and_rings() {
        for lo in 10..=20u16 {
            for ro in 10..=20u16 {
                let l = layout(lo, ro);
                if l.check().is_err() {
                    continue;
                }
                let spot = MarkerSpot::for_layout(&l).expect("room in every accepted layout");
                let n = l.left.grants.len() + l.right.grants.len();
                assert!(spot.offset(Side::Server) >= grant_offset(n).unwrap());
                for r in [&l.left, &l.right] {
                    if r.grants.is_empty() {
                        assert!(spot.offset(Side::Client) < 1 << r.order);
                    }
                }
                assert!(spot.offset(Side::Client) < CONTROL_PAGE_SIZE);
            }
        }
    }

    #[test]
    fn no_room_means_no_spot() {
        assert_eq!(MarkerSpot::between(1024, 1024), None);
        assert_eq!(MarkerSpot::between(1023, 1024), None);
        assert_eq!(MarkerSpot::between(4095, 8192), None);
        assert_eq!(MarkerSpot::between(usize::MAX, usize::MAX), None);
        assert!(MarkerSpot::between(1022, 1024).is_some());
    }

    #[test]
    fn the_marker_tells_close_from_death() {
        use PeerState::*;
        // (live, marker, was_aware) -> (state, aware)
        let cases = [
            // A libxenvchan peer: the marker stays 0; every 0 is a close.
            (1, Some(0), false, (Connected, false)),
            (0, Some(0), false, (Closed, false)),
            // No spot in the layout: as libxenvchan.
            (0, None, false, (Closed, false)),
            (0, None, true, (Closed, false)),
            // An aware peer alive, closed cleanly, dead.
            (1, Some(1), false, (Connected, true)),
            (0, Some(2), false, (Closed, true)),
            (0, Some(2), true, (Closed, true)),
            (0, Some(1), false, (Died, true)),
            (0, Some(1), true, (Died, true)),
            // Showed 1 before, now 0: not a clean close.
            (0, Some(0), true, (Died, true)),
            (1, Some(0), true, (Connected, true)),
            // Marker 2 seen before the live byte's 0: still connected.
            (1, Some(2), true, (Connected, true)),
            // The server before its client came.
            (2, Some(0), false, (NotYetConnected, false)),
        ];
        for (live, marker, was, want) in cases {
            assert_eq!(
                judge(live, marker, was),
                Ok(want),
                "live {live}, marker {marker:?}, was aware {was}"
            );
        }
    }

    #[test]
    fn bytes_out_of_range_are_errors() {
        assert_eq!(
            judge(0, Some(3), true),
            Err(StreamError::BadMarker { value: 3 })
        );
        assert_eq!(
            judge(1, Some(0xff), false),
            Err(StreamError::BadMarker { value: 0xff })
        );
        assert_eq!(
            judge(9, Some(1), false),
            Err(StreamError::BadLive { value: 9 })
        );
    }
}
