//! The shared header of a request/response ring (Xen's `public/io/ring.h`:
//! the `struct NAME_sring` that `DEFINE_RING_TYPES` declares for every
//! protocol), and the rule that sizes a ring.
//!
//! # Layout
//!
//! ```text
//!  0      4          8        12         16    20                64
//!  +------+----------+--------+----------+-----+-----------------+----------
//!  |req_  |req_event |rsp_prod|rsp_event | pvt | padding         | entries...
//!  |prod  |          |        |          |     |                 | (union of
//!  +------+----------+--------+----------+-----+-----------------+ req, rsp)
//! ```
//!
//! The header is always 64 bytes; the entries (each the size of the larger of
//! the protocol's request and response) start right after it. The number of
//! entries is what fits in the rest of the ring's pages, rounded down to a
//! power of two ([`ring_entries`]), so that a free-running u32 index maps to
//! a slot by masking.
//!
//! This module holds the format only. Which side writes which field, the
//! barriers, and the notify rule live in the ring protocol code, which reads
//! and writes the index fields of shared memory through atomics; this view
//! is for private copies and for initialising a fresh page.

use super::{get_u32, set_u32, view_common};

/// Size of the shared header in bytes; entries start at this offset.
pub const SRING_HEADER_SIZE: usize = 64;

/// Byte offset of `req_prod` in the header.
pub const REQ_PROD_OFFSET: usize = field::REQ_PROD.start;
/// Byte offset of `req_event` in the header.
pub const REQ_EVENT_OFFSET: usize = field::REQ_EVENT.start;
/// Byte offset of `rsp_prod` in the header.
pub const RSP_PROD_OFFSET: usize = field::RSP_PROD.start;
/// Byte offset of `rsp_event` in the header.
pub const RSP_EVENT_OFFSET: usize = field::RSP_EVENT.start;

/// Number of entries in a ring of `ring_bytes` bytes (header included) whose
/// entries are `entry_size` bytes: the entries that fit after the 64-byte
/// header, rounded down to a power of two (ring.h's `__CONST_RING_SIZE`, which
/// rounds with `__RD32`). Returns 0 when not even one entry fits, or when
/// `entry_size` is 0.
///
/// Examples: one 4096-byte page of 112-byte blkif entries holds 32; of
/// 12-byte netif tx or 8-byte netif rx entries, 256.
pub const fn ring_entries(ring_bytes: usize, entry_size: usize) -> usize {
    if entry_size == 0 || ring_bytes <= SRING_HEADER_SIZE {
        return 0;
    }
    let fit = (ring_bytes - SRING_HEADER_SIZE) / entry_size;
    if fit == 0 {
        0
    } else {
        // The highest set bit of `fit`.
        1 << (usize::BITS - 1 - fit.leading_zeros())
    }
}

mod field {
    use core::ops::Range;
    pub const REQ_PROD: Range<usize> = 0..4;
    pub const REQ_EVENT: Range<usize> = 4..8;
    pub const RSP_PROD: Range<usize> = 8..12;
    pub const RSP_EVENT: Range<usize> = 12..16;
    pub const PVT: Range<usize> = 16..20;
    pub const PAD: Range<usize> = 20..64;
}

/// A view of the 64-byte shared ring header (`struct NAME_sring` up to its
/// `ring[]` member): u32 `req_prod` @0, u32 `req_event` @4, u32 `rsp_prod` @8,
/// u32 `rsp_event` @12, 4 private bytes `pvt` @16, 44 bytes of padding @20.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SringHeader<T: AsRef<[u8]>> {
    buffer: T,
}

view_common!(SringHeader, "sring header", 64);

impl<T: AsRef<[u8]>> SringHeader<T> {
    /// Requests produced so far (free-running; written by the frontend).
    pub fn req_prod(&self) -> u32 {
        get_u32(self.buffer.as_ref(), field::REQ_PROD)
    }
    /// The request index at which the backend wants a notification.
    pub fn req_event(&self) -> u32 {
        get_u32(self.buffer.as_ref(), field::REQ_EVENT)
    }
    /// Responses produced so far (free-running; written by the backend).
    pub fn rsp_prod(&self) -> u32 {
        get_u32(self.buffer.as_ref(), field::RSP_PROD)
    }
    /// The response index at which the frontend wants a notification.
    pub fn rsp_event(&self) -> u32 {
        get_u32(self.buffer.as_ref(), field::RSP_EVENT)
    }
    /// The 4 protocol-private bytes (`pvt`; e.g. netif's `smartpoll_active`).
    pub fn pvt(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PVT]
    }
    /// The 44 padding bytes after `pvt`.
    pub fn padding(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> SringHeader<T> {
    /// Sets `req_prod`.
    pub fn set_req_prod(&mut self, v: u32) {
        set_u32(self.buffer.as_mut(), field::REQ_PROD, v)
    }
    /// Sets `req_event`.
    pub fn set_req_event(&mut self, v: u32) {
        set_u32(self.buffer.as_mut(), field::REQ_EVENT, v)
    }
    /// Sets `rsp_prod`.
    pub fn set_rsp_prod(&mut self, v: u32) {
        set_u32(self.buffer.as_mut(), field::RSP_PROD, v)
    }
    /// Sets `rsp_event`.
    pub fn set_rsp_event(&mut self, v: u32) {
        set_u32(self.buffer.as_mut(), field::RSP_EVENT, v)
    }
    /// The 4 protocol-private bytes, writable.
    pub fn pvt_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PVT]
    }
    /// Puts the header in the state of a fresh, empty ring (ring.h's
    /// `SHARED_RING_INIT`): both producers 0, both event fields 1 (the first
    /// message produced on either side asks for a notification), private
    /// bytes and padding zeroed. Entries are not touched.
    pub fn init(&mut self) {
        self.set_req_prod(0);
        self.set_rsp_prod(0);
        self.set_req_event(1);
        self.set_rsp_event(1);
        self.buffer.as_mut()[field::PVT.start..field::PAD.end].fill(0);
    }
}

/// `#[repr(C)]` mirrors of Xen's declarations, checked against the field
/// ranges at compile time.
#[allow(dead_code)]
mod c {
    use core::mem::{offset_of, size_of};

    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct sring_pvt_netif {
        pub smartpoll_active: u8,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct sring_pvt_tapif_user {
        pub msg: u8,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub union sring_pvt {
        pub netif: sring_pvt_netif,
        pub tapif_user: sring_pvt_tapif_user,
        pub pvt_pad: [u8; 4],
    }

    /// `struct NAME_sring` for a protocol whose entries are 8-byte aligned
    /// (the strictest any ring uses); `ring` is the flexible array.
    #[repr(C)]
    pub struct sring {
        pub req_prod: u32,
        pub req_event: u32,
        pub rsp_prod: u32,
        pub rsp_event: u32,
        pub pvt: sring_pvt,
        pub __pad: [u8; 44],
        pub ring: [u64; 0],
    }
    const _: () =
        assert!(size_of::<sring_pvt>() == super::field::PVT.end - super::field::PVT.start);
    const _: () = assert!(offset_of!(sring, req_prod) == super::field::REQ_PROD.start);
    const _: () = assert!(offset_of!(sring, req_event) == super::field::REQ_EVENT.start);
    const _: () = assert!(offset_of!(sring, rsp_prod) == super::field::RSP_PROD.start);
    const _: () = assert!(offset_of!(sring, rsp_event) == super::field::RSP_EVENT.start);
    const _: () = assert!(offset_of!(sring, pvt) == super::field::PVT.start);
    const _: () = assert!(offset_of!(sring, __pad) == super::field::PAD.start);
    const _: () = assert!(size_of::<[u8; 44]>() == super::field::PAD.end - super::field::PAD.start);
    const _: () = assert!(offset_of!(sring, ring) == super::SRING_HEADER_SIZE);
    const _: () = assert!(size_of::<sring>() == super::SRING_HEADER_SIZE);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_entries_matches_ring_h() {
        // One page of blkif entries (112 bytes): 3968 / 112 = 35 -> 32.
        assert_eq!(ring_entries(4096, 112), 32);
        // netif rx (8 bytes): 4032 / 8 = 504 -> 256.
        assert_eq!(ring_entries(4096, 8), 256);
        // netif tx (12 bytes): 4032 / 12 = 336 -> 256.
        assert_eq!(ring_entries(4096, 12), 256);
        // 16 pages of blkif: 65472 / 112 = 584 -> 512.
        assert_eq!(ring_entries(16 * 4096, 112), 512);
        // 64-byte entries: 4032 / 64 = 63 -> 32.
        assert_eq!(ring_entries(4096, 64), 32);
        // Exact powers of two stay.
        assert_eq!(ring_entries(64 + 4 * 16, 16), 4);
    }

    #[test]
    fn ring_entries_degenerate_inputs() {
        assert_eq!(ring_entries(0, 8), 0);
        assert_eq!(ring_entries(64, 8), 0);
        assert_eq!(ring_entries(64 + 7, 8), 0);
        assert_eq!(ring_entries(64 + 8, 8), 1);
        assert_eq!(ring_entries(4096, 0), 0);
        assert_eq!(ring_entries(4096, 4096), 0);
        assert_eq!(ring_entries(usize::MAX, 1), 1 << (usize::BITS - 1));
    }

    #[test]
    fn ring_entries_is_the_largest_power_of_two_that_fits() {
        for bytes in (0..=9000).step_by(7) {
            for size in 1..=130 {
                let n = ring_entries(bytes, size);
                let fit = bytes.saturating_sub(64) / size;
                if fit == 0 {
                    assert_eq!(n, 0);
                } else {
                    assert!(n.is_power_of_two() && n <= fit && fit < 2 * n);
                }
            }
        }
    }

    #[test]
    fn init_golden_bytes() {
        let mut h = SringHeader::new_checked([0xa5u8; 64]).unwrap();
        h.init();
        let mut golden = [0u8; 64];
        golden[4] = 1; // req_event
        golden[12] = 1; // rsp_event
        assert_eq!(h.as_bytes(), &golden);
        let v = SringHeader::new_checked(&golden[..]).unwrap();
        assert_eq!(
            (v.req_prod(), v.req_event(), v.rsp_prod(), v.rsp_event()),
            (0, 1, 0, 1)
        );
        assert_eq!(v.pvt(), &[0, 0, 0, 0]);
        assert!(v.padding().iter().all(|&b| b == 0));
        assert_eq!(v.padding().len(), 44);
    }

    #[test]
    fn init_leaves_entries_alone() {
        let mut page = [0xeeu8; 128];
        SringHeader::new_unchecked(&mut page[..]).init();
        assert!(page[64..].iter().all(|&b| b == 0xee));
    }

    #[test]
    fn header_golden_bytes() {
        let mut h = SringHeader::new_checked([0u8; 64]).unwrap();
        h.set_req_prod(0x0102_0304);
        h.set_req_event(0x0102_0305);
        h.set_rsp_prod(0xffff_fffe);
        h.set_rsp_event(0xffff_ffff);
        h.pvt_mut()[0] = 1;
        let mut golden = [0u8; 64];
        golden[..17].copy_from_slice(&[
            0x04, 0x03, 0x02, 0x01, 0x05, 0x03, 0x02, 0x01, 0xfe, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xff, 0x01,
        ]);
        assert_eq!(h.as_bytes(), &golden);
        let v = SringHeader::new_checked(&golden[..]).unwrap();
        assert_eq!(v.req_prod(), 0x0102_0304);
        assert_eq!(v.req_event(), 0x0102_0305);
        assert_eq!(v.rsp_prod(), 0xffff_fffe);
        assert_eq!(v.rsp_event(), 0xffff_ffff);
        assert_eq!(v.pvt(), &[1, 0, 0, 0]);
        assert_eq!(
            [
                REQ_PROD_OFFSET,
                REQ_EVENT_OFFSET,
                RSP_PROD_OFFSET,
                RSP_EVENT_OFFSET
            ],
            [0, 4, 8, 12]
        );
    }

    #[test]
    fn short_buffer_is_refused() {
        let err = SringHeader::new_checked(&[0u8; 63][..]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "sring header: buffer of 63 bytes is shorter than the 64 the format needs"
        );
    }
}
