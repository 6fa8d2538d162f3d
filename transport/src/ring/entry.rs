//! The fixed-size encoding of ring requests and responses.

use crate::abi::blkif::{BlkifRequest, BlkifResponse};
use crate::abi::netif::{NetifRxRequest, NetifRxResponse, NetifTxRequest, NetifTxResponse};

/// A request or response that travels in a ring slot: a fixed number of
/// bytes with the layout of a C struct.
///
/// The ring copies a slot into private memory once and calls
/// [`RingEntry::decode`] on that copy, so an implementation never sees
/// shared memory. Implemented for the `abi` views that are ring entries
/// (blkif and netif requests and responses, over owned byte arrays); a
/// protocol of one's own implements it for its own type.
///
/// A slot is as large as C's `union { req; rsp; }`: the larger
/// [`RingEntry::SIZE`], rounded up to the larger [`RingEntry::ALIGN`].
pub trait RingEntry: Sized {
    /// Size in bytes: C's `sizeof` of the struct (trailing padding
    /// included).
    const SIZE: usize;
    /// Alignment in bytes of the C struct (a power of two).
    const ALIGN: usize = 1;

    /// Decodes an entry from exactly [`RingEntry::SIZE`] bytes of private
    /// memory. Must accept any bytes without panicking: they come from the
    /// peer.
    fn decode(bytes: &[u8]) -> Self;

    /// Encodes the entry into exactly [`RingEntry::SIZE`] bytes (zeroed
    /// beforehand). Bytes left alone stay zero.
    fn encode(&self, out: &mut [u8]);
}

/// Implements [`RingEntry`] for a view over an owned byte array of the
/// view's size.
macro_rules! view_entry {
    ($view:ident, $size:literal, $align:literal) => {
        impl RingEntry for $view<[u8; $size]> {
            const SIZE: usize = $size;
            const ALIGN: usize = $align;

            fn decode(bytes: &[u8]) -> Self {
                let mut buf = [0u8; $size];
                buf.copy_from_slice(bytes);
                $view::new_unchecked(buf)
            }

            fn encode(&self, out: &mut [u8]) {
                out.copy_from_slice(self.as_bytes());
            }
        }
        const _: () = assert!($view::<[u8; $size]>::SIZE == $size);
    };
}

// Alignments are those of the C structs: blkif's have u64 members, netif's
// u32 (tx and rx requests: `gref`) or u16 (responses).
view_entry!(BlkifRequest, 112, 8);
view_entry!(BlkifResponse, 16, 8);
view_entry!(NetifTxRequest, 12, 4);
view_entry!(NetifTxResponse, 4, 2);
view_entry!(NetifRxRequest, 8, 4);
view_entry!(NetifRxResponse, 8, 2);

/// Bytes per slot for a ring of `Req` and `Rsp`: the size of C's union of
/// the two.
pub(super) fn slot_size<Req: RingEntry, Rsp: RingEntry>() -> usize {
    let align = Req::ALIGN.max(Rsp::ALIGN).max(1);
    Req::SIZE.max(Rsp::SIZE).div_ceil(align) * align
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::blkif::BLKIF_RING_ENTRY_SIZE;
    use crate::abi::netif::{NETIF_RX_RING_ENTRY_SIZE, NETIF_TX_RING_ENTRY_SIZE};

    struct Odd;
    impl RingEntry for Odd {
        const SIZE: usize = 12;
        const ALIGN: usize = 4;
        fn decode(_: &[u8]) -> Self {
            Odd
        }
        fn encode(&self, _: &mut [u8]) {}
    }
    struct Wide;
    impl RingEntry for Wide {
        const SIZE: usize = 8;
        const ALIGN: usize = 8;
        fn decode(_: &[u8]) -> Self {
            Wide
        }
        fn encode(&self, _: &mut [u8]) {}
    }

    #[test]
    fn slot_sizes_match_c_unions() {
        assert_eq!(
            slot_size::<BlkifRequest<[u8; 112]>, BlkifResponse<[u8; 16]>>(),
            BLKIF_RING_ENTRY_SIZE
        );
        assert_eq!(
            slot_size::<NetifTxRequest<[u8; 12]>, NetifTxResponse<[u8; 4]>>(),
            NETIF_TX_RING_ENTRY_SIZE
        );
        assert_eq!(
            slot_size::<NetifRxRequest<[u8; 8]>, NetifRxResponse<[u8; 8]>>(),
            NETIF_RX_RING_ENTRY_SIZE
        );
        // union { 12 bytes, align 4; 8 bytes, align 8 } is 16 bytes in C.
        assert_eq!(slot_size::<Odd, Wide>(), 16);
    }

    #[test]
    fn views_round_trip() {
        let mut r = BlkifResponse::new_unchecked([0u8; 16]);
        r.set_id(0x1122_3344_5566_7788);
        r.set_status(-1);
        let mut out = [0xaau8; 16];
        r.encode(&mut out);
        assert_eq!(BlkifResponse::decode(&out), r);
        let mut t = NetifTxRequest::new_unchecked([0u8; 12]);
        t.set_gref(7);
        t.set_size(1500);
        let mut out = [0u8; 12];
        t.encode(&mut out);
        assert_eq!(NetifTxRequest::decode(&out).size(), 1500);
    }
}
