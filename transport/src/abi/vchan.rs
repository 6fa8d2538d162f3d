//! The control page of a byte-stream channel in the libxenvchan layout
//! (Xen's `public/io/libxenvchan.h`, `struct vchan_interface`).
//!
//! # Layout
//!
//! ```text
//!  0         4         8          12         16          18           20   21   22   23   24
//!  +---------+---------+----------+----------+-----------+------------+----+----+----+----+--------
//!  |left.cons|left.prod|right.cons|right.prod|left_order |right_order |cli_|srv_|cli_|srv_| grants[]
//!  |         |         |          |          |   (u16)   |   (u16)    |live|live|ntfy|ntfy| (u32 each)
//!  +---------+---------+----------+----------+-----------+------------+----+----+----+----+--------
//! ```
//!
//! Two byte rings, one per direction:
//! - the **left** ring carries client -> server data: the client writes
//!   (`left.prod`), the server reads (`left.cons`);
//! - the **right** ring carries server -> client data: the server writes
//!   (`right.prod`), the client reads (`right.cons`).
//!
//! A ring of order `n` holds `2^n` bytes. Orders 10 and 11 place the ring
//! inside the control page itself, at offset 1024 or 2048; orders 12 to 20
//! use `2^(n-12)` separately granted pages whose references are listed in
//! `grants[]`, the left ring's pages first ([`ring_placement`]). The two
//! rings may not both sit in the control page at the same offset, and the
//! grant list must end before an in-page ring starts.
//!
//! `cli_live`/`srv_live` say whether each side is there
//! ([`VCHAN_LIVE_CLOSED`], [`VCHAN_LIVE_CONNECTED`], [`VCHAN_LIVE_WAITING`]).
//! `cli_notify`/`srv_notify` hold [`VCHAN_NOTIFY_WRITE`] and
//! [`VCHAN_NOTIFY_READ`] bits: a side that wants to be woken sets bits in the
//! *peer's* byte (the server in `cli_notify`, the client in `srv_notify`);
//! the owner of a byte, after writing or reading, fetch-and-clears the
//! matching bit of its own byte and sends an event only if it was set
//! (libxenvchan's `io.c`: `request_notify` and `send_notify`).
//!
//! This module holds the format only. The indexes and notify bytes of a
//! shared control page are accessed through atomics by the stream code; this
//! view is for private copies and for laying out a fresh page.

use super::{
    get_u16, get_u32, get_u8, grant::GrantRef, set_u16, set_u32, set_u8, view_common, AbiError,
};

/// `live`: the side has exited (or closed).
pub const VCHAN_LIVE_CLOSED: u8 = 0;
/// `live`: the side is connected.
pub const VCHAN_LIVE_CONNECTED: u8 = 1;
/// `live`: the client has not connected yet (the server's initial value of
/// `cli_live`).
pub const VCHAN_LIVE_WAITING: u8 = 2;

/// Notify bit: wake me when the peer writes data.
pub const VCHAN_NOTIFY_WRITE: u8 = 0x1;
/// Notify bit: wake me when the peer reads (consumes) data.
pub const VCHAN_NOTIFY_READ: u8 = 0x2;

/// Smallest ring order (a 1024-byte ring at offset 1024 of the control page).
pub const MIN_ORDER: u16 = 10;
/// Largest ring order (a 1 MiB ring in 256 granted pages).
pub const MAX_ORDER: u16 = 20;
/// Order of one page; rings of this order and above live in granted pages.
pub const PAGE_ORDER: u16 = 12;

/// Size of the control page (one 4096-byte page).
pub const CONTROL_PAGE_SIZE: usize = 1 << PAGE_ORDER;

/// Byte offset of `grants[0]`; grant `i` is at `GRANTS_OFFSET + 4 * i`.
pub const GRANTS_OFFSET: usize = field::GRANTS;

/// Where a ring of a given order lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RingPlacement {
    /// Inside the control page, starting at `offset` (order 10: 1024,
    /// order 11: 2048); uses no grant.
    InPage {
        /// Byte offset within the control page.
        offset: usize,
    },
    /// In `count` separately granted pages, listed in `grants[]`.
    Pages {
        /// Number of pages (`2^(order - 12)`).
        count: usize,
    },
}

impl RingPlacement {
    /// Number of `grants[]` entries the ring uses (0 for an in-page ring).
    pub fn grant_count(self) -> usize {
        match self {
            RingPlacement::InPage { .. } => 0,
            RingPlacement::Pages { count } => count,
        }
    }
}

/// Where a ring of order `order` lives (see the module documentation).
/// Orders below [`MIN_ORDER`] or above [`MAX_ORDER`] are refused with
/// [`AbiError::BadValue`].
pub fn ring_placement(order: u16) -> Result<RingPlacement, AbiError> {
    match order {
        10 | 11 => Ok(RingPlacement::InPage {
            offset: 1usize << order,
        }),
        PAGE_ORDER..=MAX_ORDER => Ok(RingPlacement::Pages {
            count: 1usize << (order - PAGE_ORDER),
        }),
        _ => Err(AbiError::BadValue {
            what: "vchan ring order",
            value: u64::from(order),
        }),
    }
}

/// Byte offset of `grants[i]` in the control page, or `None` on overflow.
pub const fn grant_offset(i: usize) -> Option<usize> {
    match i.checked_mul(4) {
        Some(o) => GRANTS_OFFSET.checked_add(o),
        None => None,
    }
}

mod field {
    use core::ops::Range;
    pub const LEFT_CONS: Range<usize> = 0..4;
    pub const LEFT_PROD: Range<usize> = 4..8;
    pub const RIGHT_CONS: Range<usize> = 8..12;
    pub const RIGHT_PROD: Range<usize> = 12..16;
    pub const LEFT_ORDER: Range<usize> = 16..18;
    pub const RIGHT_ORDER: Range<usize> = 18..20;
    pub const CLI_LIVE: usize = 20;
    pub const SRV_LIVE: usize = 21;
    pub const CLI_NOTIFY: usize = 22;
    pub const SRV_NOTIFY: usize = 23;
    pub const GRANTS: usize = 24;
}

/// A view of the 24-byte fixed part of `struct vchan_interface`, plus access
/// to the `grants[]` that follow it in as much of the buffer as there is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VchanHeader<T: AsRef<[u8]>> {
    buffer: T,
}

view_common!(VchanHeader, "vchan_interface", 24);

impl<T: AsRef<[u8]>> VchanHeader<T> {
    /// Left ring (client -> server) consumer index, written by the server.
    pub fn left_cons(&self) -> u32 {
        get_u32(self.buffer.as_ref(), field::LEFT_CONS)
    }
    /// Left ring (client -> server) producer index, written by the client.
    pub fn left_prod(&self) -> u32 {
        get_u32(self.buffer.as_ref(), field::LEFT_PROD)
    }
    /// Right ring (server -> client) consumer index, written by the client.
    pub fn right_cons(&self) -> u32 {
        get_u32(self.buffer.as_ref(), field::RIGHT_CONS)
    }
    /// Right ring (server -> client) producer index, written by the server.
    pub fn right_prod(&self) -> u32 {
        get_u32(self.buffer.as_ref(), field::RIGHT_PROD)
    }
    /// Order of the left ring (its size is `2^order` bytes).
    pub fn left_order(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::LEFT_ORDER)
    }
    /// Order of the right ring.
    pub fn right_order(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::RIGHT_ORDER)
    }
    /// Whether the client is there (`VCHAN_LIVE_*`).
    pub fn cli_live(&self) -> u8 {
        get_u8(self.buffer.as_ref(), field::CLI_LIVE)
    }
    /// Whether the server is there (`VCHAN_LIVE_*`).
    pub fn srv_live(&self) -> u8 {
        get_u8(self.buffer.as_ref(), field::SRV_LIVE)
    }
    /// Requests the server made of the client (`VCHAN_NOTIFY_*`): the
    /// client fetch-and-clears them after it writes or reads.
    pub fn cli_notify(&self) -> u8 {
        get_u8(self.buffer.as_ref(), field::CLI_NOTIFY)
    }
    /// Requests the client made of the server (`VCHAN_NOTIFY_*`): the
    /// server fetch-and-clears them after it writes or reads.
    pub fn srv_notify(&self) -> u8 {
        get_u8(self.buffer.as_ref(), field::SRV_NOTIFY)
    }
    /// How many `grants[]` entries the buffer holds in full.
    pub fn grant_capacity(&self) -> usize {
        self.buffer.as_ref().len().saturating_sub(GRANTS_OFFSET) / 4
    }
    /// `grants[i]` (at byte `24 + 4 * i`), or `None` when the buffer ends
    /// before it.
    pub fn grant(&self, i: usize) -> Option<GrantRef> {
        let start = grant_offset(i)?;
        let bytes = self.buffer.as_ref().get(start..start.checked_add(4)?)?;
        Some(get_u32(bytes, 0..4))
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VchanHeader<T> {
    /// Sets `left.cons`.
    pub fn set_left_cons(&mut self, v: u32) {
        set_u32(self.buffer.as_mut(), field::LEFT_CONS, v)
    }
    /// Sets `left.prod`.
    pub fn set_left_prod(&mut self, v: u32) {
        set_u32(self.buffer.as_mut(), field::LEFT_PROD, v)
    }
    /// Sets `right.cons`.
    pub fn set_right_cons(&mut self, v: u32) {
        set_u32(self.buffer.as_mut(), field::RIGHT_CONS, v)
    }
    /// Sets `right.prod`.
    pub fn set_right_prod(&mut self, v: u32) {
        set_u32(self.buffer.as_mut(), field::RIGHT_PROD, v)
    }
    /// Sets `left_order`.
    pub fn set_left_order(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), field::LEFT_ORDER, v)
    }
    /// Sets `right_order`.
    pub fn set_right_order(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), field::RIGHT_ORDER, v)
    }
    /// Sets `cli_live`.
    pub fn set_cli_live(&mut self, v: u8) {
        set_u8(self.buffer.as_mut(), field::CLI_LIVE, v)
    }
    /// Sets `srv_live`.
    pub fn set_srv_live(&mut self, v: u8) {
        set_u8(self.buffer.as_mut(), field::SRV_LIVE, v)
    }
    /// Sets `cli_notify`.
    pub fn set_cli_notify(&mut self, v: u8) {
        set_u8(self.buffer.as_mut(), field::CLI_NOTIFY, v)
    }
    /// Sets `srv_notify`.
    pub fn set_srv_notify(&mut self, v: u8) {
        set_u8(self.buffer.as_mut(), field::SRV_NOTIFY, v)
    }
    /// Sets `grants[i]`; refused with [`AbiError::Truncated`] when the buffer
    /// ends before it.
    pub fn set_grant(&mut self, i: usize, v: GrantRef) -> Result<(), AbiError> {
        let buf = self.buffer.as_mut();
        let got = buf.len();
        let range = grant_offset(i).and_then(|s| Some(s..s.checked_add(4)?));
        match range.clone().and_then(|r| buf.get_mut(r)) {
            Some(bytes) => {
                set_u32(bytes, 0..4, v);
                Ok(())
            }
            None => Err(AbiError::Truncated {
                what: "vchan_interface grants[]",
                need: range.map_or(usize::MAX, |r| r.end),
                got,
            }),
        }
    }
}

/// `#[repr(C)]` mirrors of Xen's declarations, checked against the field
/// ranges at compile time.
#[allow(dead_code)]
mod c {
    use core::mem::{offset_of, size_of};

    #[repr(C)]
    pub struct ring_shared {
        pub cons: u32,
        pub prod: u32,
    }
    #[repr(C)]
    pub struct vchan_interface {
        pub left: ring_shared,
        pub right: ring_shared,
        pub left_order: u16,
        pub right_order: u16,
        pub cli_live: u8,
        pub srv_live: u8,
        pub cli_notify: u8,
        pub srv_notify: u8,
        pub grants: [u32; 0],
    }
    const _: () = assert!(size_of::<ring_shared>() == 8);
    const _: () = assert!(size_of::<vchan_interface>() == 24);
    const _: () = assert!(
        offset_of!(vchan_interface, left) + offset_of!(ring_shared, cons)
            == super::field::LEFT_CONS.start
    );
    const _: () = assert!(
        offset_of!(vchan_interface, left) + offset_of!(ring_shared, prod)
            == super::field::LEFT_PROD.start
    );
    const _: () = assert!(
        offset_of!(vchan_interface, right) + offset_of!(ring_shared, cons)
            == super::field::RIGHT_CONS.start
    );
    const _: () = assert!(
        offset_of!(vchan_interface, right) + offset_of!(ring_shared, prod)
            == super::field::RIGHT_PROD.start
    );
    const _: () =
        assert!(offset_of!(vchan_interface, left_order) == super::field::LEFT_ORDER.start);
    const _: () =
        assert!(offset_of!(vchan_interface, right_order) == super::field::RIGHT_ORDER.start);
    const _: () = assert!(offset_of!(vchan_interface, cli_live) == super::field::CLI_LIVE);
    const _: () = assert!(offset_of!(vchan_interface, srv_live) == super::field::SRV_LIVE);
    const _: () = assert!(offset_of!(vchan_interface, cli_notify) == super::field::CLI_NOTIFY);
    const _: () = assert!(offset_of!(vchan_interface, srv_notify) == super::field::SRV_NOTIFY);
    const _: () = assert!(offset_of!(vchan_interface, grants) == super::field::GRANTS);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_match_libxenvchan() {
        assert_eq!(
            [VCHAN_LIVE_CLOSED, VCHAN_LIVE_CONNECTED, VCHAN_LIVE_WAITING],
            [0, 1, 2]
        );
        assert_eq!([VCHAN_NOTIFY_WRITE, VCHAN_NOTIFY_READ], [1, 2]);
        assert_eq!([MIN_ORDER, PAGE_ORDER, MAX_ORDER], [10, 12, 20]);
        assert_eq!(CONTROL_PAGE_SIZE, 4096);
        assert_eq!(GRANTS_OFFSET, 24);
    }

    #[test]
    fn header_golden_bytes() {
        let mut h = VchanHeader::new_checked([0u8; 24]).unwrap();
        h.set_left_cons(0x0102_0304);
        h.set_left_prod(0x0506_0708);
        h.set_right_cons(0xa0b0_c0d0);
        h.set_right_prod(0xffff_fff0);
        h.set_left_order(10);
        h.set_right_order(13);
        h.set_cli_live(VCHAN_LIVE_WAITING);
        h.set_srv_live(VCHAN_LIVE_CONNECTED);
        h.set_cli_notify(VCHAN_NOTIFY_WRITE);
        h.set_srv_notify(VCHAN_NOTIFY_READ | VCHAN_NOTIFY_WRITE);
        let golden: [u8; 24] = [
            0x04, 0x03, 0x02, 0x01, 0x08, 0x07, 0x06, 0x05, 0xd0, 0xc0, 0xb0, 0xa0, 0xf0, 0xff,
            0xff, 0xff, 0x0a, 0x00, 0x0d, 0x00, 0x02, 0x01, 0x01, 0x03,
        ];
        assert_eq!(h.as_bytes(), &golden);
        let v = VchanHeader::new_checked(&golden[..]).unwrap();
        assert_eq!(v.left_cons(), 0x0102_0304);
        assert_eq!(v.left_prod(), 0x0506_0708);
        assert_eq!(v.right_cons(), 0xa0b0_c0d0);
        assert_eq!(v.right_prod(), 0xffff_fff0);
        assert_eq!(v.left_order(), 10);
        assert_eq!(v.right_order(), 13);
        assert_eq!(v.cli_live(), VCHAN_LIVE_WAITING);
        assert_eq!(v.srv_live(), VCHAN_LIVE_CONNECTED);
        assert_eq!(v.cli_notify(), VCHAN_NOTIFY_WRITE);
        assert_eq!(v.srv_notify(), 3);
        assert_eq!(v.grant_capacity(), 0);
        assert_eq!(v.grant(0), None);
    }

    #[test]
    fn grants_golden_bytes_and_bounds() {
        let mut h = VchanHeader::new_checked([0u8; 34]).unwrap();
        assert_eq!(h.grant_capacity(), 2);
        h.set_grant(0, 0x11).unwrap();
        h.set_grant(1, 0xdead_beef).unwrap();
        let err = h.set_grant(2, 7).unwrap_err();
        assert_eq!(
            err,
            AbiError::Truncated {
                what: "vchan_interface grants[]",
                need: 36,
                got: 34
            }
        );
        assert!(h.set_grant(usize::MAX, 7).is_err());
        assert!(h.set_grant(usize::MAX / 4, 7).is_err());
        let bytes = h.into_inner();
        assert_eq!(&bytes[24..], &[0x11, 0, 0, 0, 0xef, 0xbe, 0xad, 0xde, 0, 0]);
        let v = VchanHeader::new_checked(&bytes[..]).unwrap();
        assert_eq!(v.grant(0), Some(0x11));
        assert_eq!(v.grant(1), Some(0xdead_beef));
        assert_eq!(v.grant(2), None);
        assert_eq!(v.grant(usize::MAX), None);
        assert_eq!(v.grant(usize::MAX / 4), None);
        assert_eq!(grant_offset(3), Some(36));
        assert_eq!(grant_offset(usize::MAX), None);
    }

    #[test]
    fn a_full_control_page_has_room_for_1018_grants() {
        let page = [0u8; CONTROL_PAGE_SIZE];
        let v = VchanHeader::new_checked(&page[..]).unwrap();
        assert_eq!(v.grant_capacity(), 1018);
        assert_eq!(v.grant(1017), Some(0));
        assert_eq!(v.grant(1018), None);
    }

    #[test]
    fn ring_placement_by_order() {
        assert_eq!(
            ring_placement(10),
            Ok(RingPlacement::InPage { offset: 1024 })
        );
        assert_eq!(
            ring_placement(11),
            Ok(RingPlacement::InPage { offset: 2048 })
        );
        assert_eq!(ring_placement(12), Ok(RingPlacement::Pages { count: 1 }));
        assert_eq!(ring_placement(13), Ok(RingPlacement::Pages { count: 2 }));
        assert_eq!(ring_placement(20), Ok(RingPlacement::Pages { count: 256 }));
        assert_eq!(ring_placement(11).unwrap().grant_count(), 0);
        assert_eq!(ring_placement(16).unwrap().grant_count(), 16);
        for bad in [0u16, 9, 21, u16::MAX] {
            assert_eq!(
                ring_placement(bad),
                Err(AbiError::BadValue {
                    what: "vchan ring order",
                    value: u64::from(bad)
                })
            );
        }
    }

    #[test]
    fn short_buffer_is_refused() {
        let err = VchanHeader::new_checked(&[0u8; 23][..]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "vchan_interface: buffer of 23 bytes is shorter than the 24 the format needs"
        );
    }
}
