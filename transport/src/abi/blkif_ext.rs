//! xenring's extensions of the blkif protocol. Each is offered by a
//! backend key and used only by a frontend that saw the key, so C peers
//! (Linux blkfront/blkback, which never write or read these keys) never
//! meet them:
//!
//! | backend key | what it offers |
//! |---|---|
//! | `xenring-size-bytes` | the exact size when it is not a multiple of 512 |
//! | `feature-xenring-write-zeroes = 1` | [`BLKIF_OP_XENRING_WRITE_ZEROES`] |
//! | `feature-xenring-block-status = 1` | [`BLKIF_OP_XENRING_BLOCK_STATUS`] |
//!
//! blkif has no "zero a range" (discard may leave anything behind) and no
//! way to ask which ranges are allocated, which NBD's `WRITE_ZEROES` and
//! `base:allocation` need. The two operations use numbers far from Xen's
//! (0..=6) and the layouts below (little-endian, as the rest of blkif).
//!
//! ```text
//! write zeroes: the discard layout (blkif_request_discard, 32 bytes)
//!   flag: ZERO_MAY_UNMAP (may deallocate) | ZERO_FAST (fail rather than
//!   write zeroes slowly: BLKIF_RSP_EOPNOTSUPP)
//!
//! block status request (40 bytes; a 112-byte slot)
//!  0 op  1 flag (0)  2 handle  4 pad  8 id  16 sector_number
//!  24 nr_sectors  32 gref (a page granted writable to the backend)  36 pad
//!
//! status page (written by the backend into the granted page)
//!  0 count (u32, at most MAX_EXTENTS)  4 pad
//!  8 + 16 i: nr_sectors (u64, nonzero)  flags (u32: EXTENT_*)  pad (u32)
//! ```
//!
//! The extents describe consecutive sectors from `sector_number`; they may
//! cover less than `nr_sectors` (the frontend asks again for the rest),
//! never more.

use super::{check_len, get_u32, get_u64, get_u8, set_u32, set_u64, set_u8, view_common, AbiError};

/// Zero `nr_sectors` from `sector_number` (the discard layout).
pub const BLKIF_OP_XENRING_WRITE_ZEROES: u8 = 0xe0;
/// Report the allocation of a range into a granted page.
pub const BLKIF_OP_XENRING_BLOCK_STATUS: u8 = 0xe1;

/// Write-zeroes flag: the range may be deallocated (a hole punched).
pub const ZERO_MAY_UNMAP: u8 = 1 << 0;
/// Write-zeroes flag: answer `BLKIF_RSP_EOPNOTSUPP` rather than writing
/// zeroes when the range cannot be zeroed quickly.
pub const ZERO_FAST: u8 = 1 << 1;

/// Extent flag: not allocated (NBD's `NBD_STATE_HOLE`).
pub const EXTENT_HOLE: u32 = 1 << 0;
/// Extent flag: reads as zeroes (NBD's `NBD_STATE_ZERO`).
pub const EXTENT_ZERO: u32 = 1 << 1;

/// Most extents in one status page.
pub const MAX_EXTENTS: usize = (4096 - 8) / 16;

/// XenStore keys of the extensions (backend side).
pub mod keys {
    /// The disk's exact size in bytes, for images that are not a multiple
    /// of 512 bytes; `sectors` is then this rounded up, the last sector's
    /// tail reads as zeroes and writes to it are dropped.
    pub const SIZE_BYTES: &str = "xenring-size-bytes";
    /// 1 if [`super::BLKIF_OP_XENRING_WRITE_ZEROES`] is served.
    pub const FEATURE_WRITE_ZEROES: &str = "feature-xenring-write-zeroes";
    /// 1 if [`super::BLKIF_OP_XENRING_BLOCK_STATUS`] is served.
    pub const FEATURE_BLOCK_STATUS: &str = "feature-xenring-block-status";
}

mod field {
    use core::ops::Range;
    pub const OPERATION: usize = 0;
    pub const SECTOR_NUMBER: Range<usize> = 16..24;
    pub const NR_SECTORS: Range<usize> = 24..32;
    pub const GREF: Range<usize> = 32..36;
}

/// A view of the block status request (40 bytes; its first 32 are the
/// discard layout, so `operation`, `id` and the range are read as for a
/// discard).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlkifRequestStatus<T: AsRef<[u8]>> {
    buffer: T,
}

view_common!(BlkifRequestStatus, "blkif_request_xenring_status", 40);

impl<T: AsRef<[u8]>> BlkifRequestStatus<T> {
    /// `operation` ([`BLKIF_OP_XENRING_BLOCK_STATUS`] when well-formed).
    pub fn operation(&self) -> u8 {
        get_u8(self.buffer.as_ref(), field::OPERATION)
    }
    /// First sector asked about.
    pub fn sector_number(&self) -> u64 {
        get_u64(self.buffer.as_ref(), field::SECTOR_NUMBER)
    }
    /// Number of sectors asked about.
    pub fn nr_sectors(&self) -> u64 {
        get_u64(self.buffer.as_ref(), field::NR_SECTORS)
    }
    /// The page the backend writes the extents into.
    pub fn gref(&self) -> u32 {
        get_u32(self.buffer.as_ref(), field::GREF)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> BlkifRequestStatus<T> {
    /// Sets `operation`.
    pub fn set_operation(&mut self, v: u8) {
        set_u8(self.buffer.as_mut(), field::OPERATION, v)
    }
    /// Sets `sector_number`.
    pub fn set_sector_number(&mut self, v: u64) {
        set_u64(self.buffer.as_mut(), field::SECTOR_NUMBER, v)
    }
    /// Sets `nr_sectors`.
    pub fn set_nr_sectors(&mut self, v: u64) {
        set_u64(self.buffer.as_mut(), field::NR_SECTORS, v)
    }
    /// Sets `gref`.
    pub fn set_gref(&mut self, v: u32) {
        set_u32(self.buffer.as_mut(), field::GREF, v)
    }
}

/// One extent of a status page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Its length in sectors (nonzero).
    pub sectors: u64,
    /// `EXTENT_*`.
    pub flags: u32,
}

/// Writes `extents` (at most [`MAX_EXTENTS`], each nonzero) into a status
/// page of at least 4096 bytes.
pub fn encode_extents(page: &mut [u8], extents: &[Extent]) -> Result<(), AbiError> {
    check_len("xenring status page", page, 4096)?;
    if extents.len() > MAX_EXTENTS {
        return Err(AbiError::BadValue {
            what: "xenring status page: extent count",
            value: extents.len() as u64,
        });
    }
    set_u32(page, 0..4, extents.len() as u32);
    set_u32(page, 4..8, 0);
    for (i, e) in extents.iter().enumerate() {
        let at = 8 + 16 * i;
        set_u64(page, at..at + 8, e.sectors);
        set_u32(page, at + 8..at + 12, e.flags);
        set_u32(page, at + 12..at + 16, 0);
    }
    Ok(())
}

/// Reads a status page the backend wrote (hostile input: the count is
/// checked against [`MAX_EXTENTS`], every extent must be nonzero and all
/// together at most `asked` sectors).
pub fn decode_extents(page: &[u8], asked: u64) -> Result<Vec<Extent>, AbiError> {
    check_len("xenring status page", page, 4096)?;
    let n = get_u32(page, 0..4) as usize;
    if n == 0 || n > MAX_EXTENTS {
        return Err(AbiError::BadValue {
            what: "xenring status page: extent count",
            value: n as u64,
        });
    }
    let mut total: u64 = 0;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let at = 8 + 16 * i;
        let e = Extent {
            sectors: get_u64(page, at..at + 8),
            flags: get_u32(page, at + 8..at + 12),
        };
        total = total.saturating_add(e.sectors);
        if e.sectors == 0 || total > asked {
            return Err(AbiError::BadValue {
                what: "xenring status page: extent length",
                value: e.sectors,
            });
        }
        out.push(e);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_request_golden_bytes() {
        let mut r = BlkifRequestStatus::new_checked([0u8; 112]).unwrap();
        r.set_sector_number(0x0102);
        r.set_nr_sectors(8);
        r.set_gref(0xa0b0c0d0);
        r.set_operation(BLKIF_OP_XENRING_BLOCK_STATUS);
        assert_eq!(r.operation(), 0xe1);
        let b = r.into_inner();
        assert_eq!(&b[16..24], &[2, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&b[24..32], &[8, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&b[32..36], &[0xd0, 0xc0, 0xb0, 0xa0]);
        let d = super::super::blkif::BlkifRequestDiscard::new_unchecked(b);
        assert_eq!((d.sector_number(), d.nr_sectors()), (0x0102, 8));
        assert!(BlkifRequestStatus::new_checked([0u8; 39]).is_err());
    }

    #[test]
    fn status_pages_round_trip_and_hostile_ones_are_refused() {
        let mut page = vec![0u8; 4096];
        let ext = [
            Extent {
                sectors: 8,
                flags: 0,
            },
            Extent {
                sectors: 24,
                flags: EXTENT_HOLE | EXTENT_ZERO,
            },
        ];
        encode_extents(&mut page, &ext).unwrap();
        assert_eq!(&page[..8], &[2, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&page[24..36], &[24, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0]);
        assert_eq!(decode_extents(&page, 32).unwrap(), ext);
        // More than was asked, a zero-length extent, a wild count.
        assert!(decode_extents(&page, 31).is_err());
        page[24] = 0;
        assert!(decode_extents(&page, 32).is_err());
        page[..4].copy_from_slice(&(MAX_EXTENTS as u32 + 1).to_le_bytes());
        assert!(decode_extents(&page, u64::MAX).is_err());
        page[..4].fill(0);
        assert!(decode_extents(&page, 32).is_err());
        assert!(decode_extents(&page[..100], 32).is_err());
        let many = vec![ext[0]; MAX_EXTENTS + 1];
        assert!(encode_extents(&mut page, &many).is_err());
        assert_eq!(MAX_EXTENTS, 255);
    }
}
