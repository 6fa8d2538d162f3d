//! The block-device ring protocol (Xen's `public/io/blkif.h`): requests,
//! responses, the discard and indirect request variants, the segment
//! descriptor, and the protocol's constants. Layouts are those of x86_64
//! (and arm64): natural alignment, no packing.
//!
//! # Layouts
//!
//! ```text
//! blkif_request (112 bytes)
//!  0    1     2      4      8    16             24                          112
//!  +----+-----+------+------+----+--------------+---------------------------+
//!  | op | nr  |handle| pad  | id | sector_number| seg[11], 8 bytes each     |
//!  |    | segs|      |      |    |              | {gref, first, last, pad}  |
//!  +----+-----+------+------+----+--------------+---------------------------+
//!
//! blkif_request_discard (32 bytes)      blkif_request_indirect (64 bytes)
//!  0 op  1 flag  2 handle  4 pad         0 op (=6)  1 indirect_op  2 nr_segments (u16)
//!  8 id  16 sector_number                4 pad  8 id  16 sector_number  24 handle
//!  24 nr_sectors                         26 pad  28 indirect_grefs[8]  60 pad
//!
//! blkif_response (16 bytes)
//!  0 id   8 op   9 pad   10 status (i16)   12 pad
//! ```
//!
//! A ring entry is the union of request and response: 112 bytes, so one
//! 4096-byte page holds 32 entries. Discard and indirect requests occupy a
//! whole 112-byte slot too; their own C structs are shorter.
//!
//! Sector numbers and `first_sect`/`last_sect` count 512-byte sectors
//! ([`BLKIF_SECTOR_SIZE`]) whatever the disk's real sector size.

use super::{
    get_i16, get_u16, get_u32, get_u64, get_u8, grant::GrantRef, set_i16, set_u16, set_u32,
    set_u64, set_u8, view_common, AbiError,
};

/// Read sectors into the segments' pages.
pub const BLKIF_OP_READ: u8 = 0;
/// Write sectors from the segments' pages.
pub const BLKIF_OP_WRITE: u8 = 1;
/// Write, ordered after every earlier write (backend feature
/// `feature-barrier`).
pub const BLKIF_OP_WRITE_BARRIER: u8 = 2;
/// Flush the disk's volatile cache (backend feature `feature-flush-cache`).
pub const BLKIF_OP_FLUSH_DISKCACHE: u8 = 3;
/// Reserved (vendor-specific command packets); never sent by xenring.
pub const BLKIF_OP_RESERVED_1: u8 = 4;
/// Discard a range of sectors ([`BlkifRequestDiscard`]; backend feature
/// `feature-discard`).
pub const BLKIF_OP_DISCARD: u8 = 5;
/// A read or write whose segments are in separate pages
/// ([`BlkifRequestIndirect`]; backend feature
/// `feature-max-indirect-segments`).
pub const BLKIF_OP_INDIRECT: u8 = 6;

/// Response status: done.
pub const BLKIF_RSP_OKAY: i16 = 0;
/// Response status: failed (an I/O error).
pub const BLKIF_RSP_ERROR: i16 = -1;
/// Response status: the operation is not supported.
pub const BLKIF_RSP_EOPNOTSUPP: i16 = -2;

/// Segments in a direct request.
pub const BLKIF_MAX_SEGMENTS_PER_REQUEST: usize = 11;
/// Pages of segment descriptors an indirect request may reference.
pub const BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST: usize = 8;
/// Segment descriptors in one indirect page: 4096 / 8.
pub const SEGS_PER_INDIRECT_FRAME: usize = 4096 / BlkifSegment::SIZE;
/// The unit of `sector_number`, `nr_sectors`, `first_sect` and `last_sect`.
pub const BLKIF_SECTOR_SIZE: usize = 512;
/// Discard flag: make the discarded data unrecoverable (backend feature
/// `discard-secure`).
pub const BLKIF_DISCARD_SECURE: u8 = 1 << 0;

/// Size of one ring entry (the larger of request and response).
pub const BLKIF_RING_ENTRY_SIZE: usize = 112;

/// `info` bit: the device is a CD-ROM.
pub const VDISK_CDROM: u32 = 0x1;
/// `info` bit: the medium is removable.
pub const VDISK_REMOVABLE: u32 = 0x2;
/// `info` bit: the device is read-only.
pub const VDISK_READONLY: u32 = 0x4;

mod seg_field {
    use core::ops::Range;
    pub const GREF: Range<usize> = 0..4;
    pub const FIRST_SECT: usize = 4;
    pub const LAST_SECT: usize = 5;
}

/// One segment descriptor (`struct blkif_request_segment`, 8 bytes: u32
/// `gref`, u8 `first_sect`, u8 `last_sect`, 2 bytes padding): a granted page
/// and the inclusive range of 512-byte sectors within it. The same 8 bytes
/// appear inside a direct request and, 512 to a page, in the pages of an
/// indirect request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct BlkifSegment {
    /// The granted page.
    pub gref: GrantRef,
    /// First sector of the page to transfer (inclusive).
    pub first_sect: u8,
    /// Last sector of the page to transfer (inclusive).
    pub last_sect: u8,
}

impl BlkifSegment {
    /// Size of an encoded segment.
    pub const SIZE: usize = 8;

    /// Decodes the first 8 bytes of `b`.
    pub fn from_bytes(b: &[u8]) -> Result<BlkifSegment, AbiError> {
        super::check_len("blkif_request_segment", b, Self::SIZE)?;
        Ok(Self::decode(b))
    }

    /// Encodes into the first 8 bytes of `b` (padding written as zero).
    pub fn write_to(&self, b: &mut [u8]) -> Result<(), AbiError> {
        super::check_len("blkif_request_segment", b, Self::SIZE)?;
        self.encode(b);
        Ok(())
    }

    /// The 8 encoded bytes.
    pub fn to_bytes(&self) -> [u8; 8] {
        let mut b = [0u8; 8];
        self.encode(&mut b);
        b
    }

    /// Descriptor `i` of an indirect page (at byte `8 * i`). Refused when `i`
    /// is not below [`SEGS_PER_INDIRECT_FRAME`] or `page` ends before it.
    pub fn from_indirect_page(page: &[u8], i: usize) -> Result<BlkifSegment, AbiError> {
        let start = indirect_offset(i)?;
        match page.get(start..start + Self::SIZE) {
            Some(b) => Ok(Self::decode(b)),
            None => Err(indirect_page_short(start, page.len())),
        }
    }

    /// Writes descriptor `i` of an indirect page. Refused like
    /// [`Self::from_indirect_page`].
    pub fn write_to_indirect_page(&self, page: &mut [u8], i: usize) -> Result<(), AbiError> {
        let start = indirect_offset(i)?;
        let got = page.len();
        match page.get_mut(start..start + Self::SIZE) {
            Some(b) => {
                self.encode(b);
                Ok(())
            }
            None => Err(indirect_page_short(start, got)),
        }
    }

    /// Decodes from a slice known to hold at least 8 bytes.
    fn decode(b: &[u8]) -> BlkifSegment {
        BlkifSegment {
            gref: get_u32(b, seg_field::GREF),
            first_sect: get_u8(b, seg_field::FIRST_SECT),
            last_sect: get_u8(b, seg_field::LAST_SECT),
        }
    }

    /// Encodes into a slice known to hold at least 8 bytes.
    fn encode(&self, b: &mut [u8]) {
        set_u32(b, seg_field::GREF, self.gref);
        set_u8(b, seg_field::FIRST_SECT, self.first_sect);
        set_u8(b, seg_field::LAST_SECT, self.last_sect);
        b[6..8].fill(0);
    }
}

/// The error for an indirect page too short to hold the descriptor at
/// `start`.
fn indirect_page_short(start: usize, got: usize) -> AbiError {
    AbiError::Truncated {
        what: "blkif_request_segment",
        need: start + BlkifSegment::SIZE,
        got,
    }
}

/// Byte offset of indirect descriptor `i`, refusing `i` past the page.
fn indirect_offset(i: usize) -> Result<usize, AbiError> {
    if i < SEGS_PER_INDIRECT_FRAME {
        Ok(i * BlkifSegment::SIZE)
    } else {
        Err(AbiError::BadValue {
            what: "indirect segment index",
            value: i as u64,
        })
    }
}

/// XenStore keys of the blkif negotiation (`public/io/blkif.h`). The
/// backend writes its features and the disk's geometry; the frontend
/// answers with its choices and its rings (per queue under `queue-N/` when
/// it uses more than one).
pub mod keys {
    /// Backend: number of sectors of 512 bytes.
    pub const SECTORS: &str = "sectors";
    /// Backend: logical sector size in bytes.
    pub const SECTOR_SIZE: &str = "sector-size";
    /// Backend: physical sector size in bytes.
    pub const PHYSICAL_SECTOR_SIZE: &str = "physical-sector-size";
    /// Backend: `VDISK_*` flags (read-only, removable, cdrom).
    pub const INFO: &str = "info";
    /// Backend: 1 if `BLKIF_OP_FLUSH_DISKCACHE` is served.
    pub const FEATURE_FLUSH_CACHE: &str = "feature-flush-cache";
    /// Backend: 1 if `BLKIF_OP_WRITE_BARRIER` is served.
    pub const FEATURE_BARRIER: &str = "feature-barrier";
    /// Backend: 1 if `BLKIF_OP_DISCARD` is served.
    pub const FEATURE_DISCARD: &str = "feature-discard";
    /// Backend: discard granularity in bytes.
    pub const DISCARD_GRANULARITY: &str = "discard-granularity";
    /// Backend: discard alignment in bytes.
    pub const DISCARD_ALIGNMENT: &str = "discard-alignment";
    /// Backend: 1 if secure discard is served.
    pub const DISCARD_SECURE: &str = "discard-secure";
    /// Both ends: 1 if grants may be kept mapped across requests.
    pub const FEATURE_PERSISTENT: &str = "feature-persistent";
    /// Backend: most segments of one `BLKIF_OP_INDIRECT` request.
    pub const FEATURE_MAX_INDIRECT_SEGMENTS: &str = "feature-max-indirect-segments";
    /// Backend: largest ring page order accepted.
    pub const MAX_RING_PAGE_ORDER: &str = "max-ring-page-order";
    /// Frontend: ring page order used.
    pub const RING_PAGE_ORDER: &str = "ring-page-order";
    /// Backend: most queues (rings) accepted.
    pub const MULTI_QUEUE_MAX_QUEUES: &str = "multi-queue-max-queues";
    /// Frontend: number of queues used; each has `queue-N/ring-ref*` and
    /// `queue-N/event-channel`.
    pub const MULTI_QUEUE_NUM_QUEUES: &str = "multi-queue-num-queues";
    /// Bytes per sector of `sectors` and of every request.
    pub const SECTOR_BYTES: usize = super::BLKIF_SECTOR_SIZE;
}

mod field {
    use core::ops::Range;
    pub const OPERATION: usize = 0;
    pub const NR_SEGMENTS: usize = 1;
    pub const HANDLE: Range<usize> = 2..4;
    pub const ID: Range<usize> = 8..16;
    pub const SECTOR_NUMBER: Range<usize> = 16..24;
    pub const SEG: Range<usize> = 24..112;
}

/// A view of `struct blkif_request` (112 bytes): a read, write, barrier or
/// flush with up to 11 segments. The first 24 bytes (`operation`, `id`,
/// `sector_number`) are shared with the other request variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlkifRequest<T: AsRef<[u8]>> {
    buffer: T,
}

view_common!(BlkifRequest, "blkif_request", 112);

impl<T: AsRef<[u8]>> BlkifRequest<T> {
    /// `BLKIF_OP_*`.
    pub fn operation(&self) -> u8 {
        get_u8(self.buffer.as_ref(), field::OPERATION)
    }
    /// Number of segments in use (unchecked: compare with
    /// [`BLKIF_MAX_SEGMENTS_PER_REQUEST`]).
    pub fn nr_segments(&self) -> u8 {
        get_u8(self.buffer.as_ref(), field::NR_SEGMENTS)
    }
    /// The virtual device (`blkif_vdev_t`).
    pub fn handle(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::HANDLE)
    }
    /// The frontend's request id, echoed in the response.
    pub fn id(&self) -> u64 {
        get_u64(self.buffer.as_ref(), field::ID)
    }
    /// First sector (512-byte units).
    pub fn sector_number(&self) -> u64 {
        get_u64(self.buffer.as_ref(), field::SECTOR_NUMBER)
    }
    /// Segment `i`, or `None` when `i` is not below
    /// [`BLKIF_MAX_SEGMENTS_PER_REQUEST`]. Does not look at `nr_segments`.
    pub fn segment(&self, i: usize) -> Option<BlkifSegment> {
        let start = segment_offset(i)?;
        Some(BlkifSegment::decode(&self.buffer.as_ref()[start..]))
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> BlkifRequest<T> {
    /// Sets `operation`.
    pub fn set_operation(&mut self, v: u8) {
        set_u8(self.buffer.as_mut(), field::OPERATION, v)
    }
    /// Sets `nr_segments`.
    pub fn set_nr_segments(&mut self, v: u8) {
        set_u8(self.buffer.as_mut(), field::NR_SEGMENTS, v)
    }
    /// Sets `handle`.
    pub fn set_handle(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), field::HANDLE, v)
    }
    /// Sets `id`.
    pub fn set_id(&mut self, v: u64) {
        set_u64(self.buffer.as_mut(), field::ID, v)
    }
    /// Sets `sector_number`.
    pub fn set_sector_number(&mut self, v: u64) {
        set_u64(self.buffer.as_mut(), field::SECTOR_NUMBER, v)
    }
    /// Sets segment `i`; refused with [`AbiError::BadValue`] when `i` is not
    /// below [`BLKIF_MAX_SEGMENTS_PER_REQUEST`].
    pub fn set_segment(&mut self, i: usize, seg: BlkifSegment) -> Result<(), AbiError> {
        let start = segment_offset(i).ok_or(AbiError::BadValue {
            what: "blkif_request segment index",
            value: i as u64,
        })?;
        seg.encode(&mut self.buffer.as_mut()[start..]);
        Ok(())
    }
}

/// Byte offset of segment `i` of a direct request.
fn segment_offset(i: usize) -> Option<usize> {
    (i < BLKIF_MAX_SEGMENTS_PER_REQUEST).then(|| field::SEG.start + i * BlkifSegment::SIZE)
}

mod discard_field {
    use core::ops::Range;
    pub const OPERATION: usize = 0;
    pub const FLAG: usize = 1;
    pub const HANDLE: Range<usize> = 2..4;
    pub const ID: Range<usize> = 8..16;
    pub const SECTOR_NUMBER: Range<usize> = 16..24;
    pub const NR_SECTORS: Range<usize> = 24..32;
}

/// A view of `struct blkif_request_discard` (32 bytes; in a ring it fills a
/// 112-byte slot): `operation` ([`BLKIF_OP_DISCARD`]), `flag`
/// ([`BLKIF_DISCARD_SECURE`] or 0), `handle`, `id`, `sector_number`,
/// `nr_sectors`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlkifRequestDiscard<T: AsRef<[u8]>> {
    buffer: T,
}

view_common!(BlkifRequestDiscard, "blkif_request_discard", 32);

impl<T: AsRef<[u8]>> BlkifRequestDiscard<T> {
    /// `operation` (`BLKIF_OP_DISCARD` for a well-formed request).
    pub fn operation(&self) -> u8 {
        get_u8(self.buffer.as_ref(), discard_field::OPERATION)
    }
    /// `BLKIF_DISCARD_SECURE` or 0.
    pub fn flag(&self) -> u8 {
        get_u8(self.buffer.as_ref(), discard_field::FLAG)
    }
    /// The virtual device.
    pub fn handle(&self) -> u16 {
        get_u16(self.buffer.as_ref(), discard_field::HANDLE)
    }
    /// The frontend's request id.
    pub fn id(&self) -> u64 {
        get_u64(self.buffer.as_ref(), discard_field::ID)
    }
    /// First sector to discard (512-byte units).
    pub fn sector_number(&self) -> u64 {
        get_u64(self.buffer.as_ref(), discard_field::SECTOR_NUMBER)
    }
    /// Number of sectors to discard (512-byte units).
    pub fn nr_sectors(&self) -> u64 {
        get_u64(self.buffer.as_ref(), discard_field::NR_SECTORS)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> BlkifRequestDiscard<T> {
    /// Sets `operation`.
    pub fn set_operation(&mut self, v: u8) {
        set_u8(self.buffer.as_mut(), discard_field::OPERATION, v)
    }
    /// Sets `flag`.
    pub fn set_flag(&mut self, v: u8) {
        set_u8(self.buffer.as_mut(), discard_field::FLAG, v)
    }
    /// Sets `handle`.
    pub fn set_handle(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), discard_field::HANDLE, v)
    }
    /// Sets `id`.
    pub fn set_id(&mut self, v: u64) {
        set_u64(self.buffer.as_mut(), discard_field::ID, v)
    }
    /// Sets `sector_number`.
    pub fn set_sector_number(&mut self, v: u64) {
        set_u64(self.buffer.as_mut(), discard_field::SECTOR_NUMBER, v)
    }
    /// Sets `nr_sectors`.
    pub fn set_nr_sectors(&mut self, v: u64) {
        set_u64(self.buffer.as_mut(), discard_field::NR_SECTORS, v)
    }
}

mod indirect_field {
    use core::ops::Range;
    pub const OPERATION: usize = 0;
    pub const INDIRECT_OP: usize = 1;
    pub const NR_SEGMENTS: Range<usize> = 2..4;
    pub const ID: Range<usize> = 8..16;
    pub const SECTOR_NUMBER: Range<usize> = 16..24;
    pub const HANDLE: Range<usize> = 24..26;
    pub const INDIRECT_GREFS: Range<usize> = 28..60;
}

/// A view of `struct blkif_request_indirect` (64 bytes on x86_64; in a ring
/// it fills a 112-byte slot): `operation` ([`BLKIF_OP_INDIRECT`]),
/// `indirect_op` (read or write), u16 `nr_segments`, `id`, `sector_number`,
/// `handle`, and up to 8 grant references of pages holding the segment
/// descriptors ([`BlkifSegment::from_indirect_page`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlkifRequestIndirect<T: AsRef<[u8]>> {
    buffer: T,
}

view_common!(BlkifRequestIndirect, "blkif_request_indirect", 64);

impl<T: AsRef<[u8]>> BlkifRequestIndirect<T> {
    /// `operation` (`BLKIF_OP_INDIRECT` for a well-formed request).
    pub fn operation(&self) -> u8 {
        get_u8(self.buffer.as_ref(), indirect_field::OPERATION)
    }
    /// The real operation (`BLKIF_OP_READ` or `BLKIF_OP_WRITE`).
    pub fn indirect_op(&self) -> u8 {
        get_u8(self.buffer.as_ref(), indirect_field::INDIRECT_OP)
    }
    /// Number of segments, across all indirect pages (unchecked).
    pub fn nr_segments(&self) -> u16 {
        get_u16(self.buffer.as_ref(), indirect_field::NR_SEGMENTS)
    }
    /// The frontend's request id.
    pub fn id(&self) -> u64 {
        get_u64(self.buffer.as_ref(), indirect_field::ID)
    }
    /// First sector (512-byte units).
    pub fn sector_number(&self) -> u64 {
        get_u64(self.buffer.as_ref(), indirect_field::SECTOR_NUMBER)
    }
    /// The virtual device.
    pub fn handle(&self) -> u16 {
        get_u16(self.buffer.as_ref(), indirect_field::HANDLE)
    }
    /// Grant reference of indirect page `i`, or `None` when `i` is not below
    /// [`BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST`].
    pub fn indirect_gref(&self, i: usize) -> Option<GrantRef> {
        let r = indirect_gref_range(i)?;
        Some(get_u32(self.buffer.as_ref(), r))
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> BlkifRequestIndirect<T> {
    /// Sets `operation`.
    pub fn set_operation(&mut self, v: u8) {
        set_u8(self.buffer.as_mut(), indirect_field::OPERATION, v)
    }
    /// Sets `indirect_op`.
    pub fn set_indirect_op(&mut self, v: u8) {
        set_u8(self.buffer.as_mut(), indirect_field::INDIRECT_OP, v)
    }
    /// Sets `nr_segments`.
    pub fn set_nr_segments(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), indirect_field::NR_SEGMENTS, v)
    }
    /// Sets `id`.
    pub fn set_id(&mut self, v: u64) {
        set_u64(self.buffer.as_mut(), indirect_field::ID, v)
    }
    /// Sets `sector_number`.
    pub fn set_sector_number(&mut self, v: u64) {
        set_u64(self.buffer.as_mut(), indirect_field::SECTOR_NUMBER, v)
    }
    /// Sets `handle`.
    pub fn set_handle(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), indirect_field::HANDLE, v)
    }
    /// Sets the grant reference of indirect page `i`; refused with
    /// [`AbiError::BadValue`] when `i` is not below
    /// [`BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST`].
    pub fn set_indirect_gref(&mut self, i: usize, v: GrantRef) -> Result<(), AbiError> {
        let r = indirect_gref_range(i).ok_or(AbiError::BadValue {
            what: "blkif_request_indirect indirect_grefs index",
            value: i as u64,
        })?;
        set_u32(self.buffer.as_mut(), r, v);
        Ok(())
    }
}

/// Byte range of `indirect_grefs[i]`.
fn indirect_gref_range(i: usize) -> Option<core::ops::Range<usize>> {
    (i < BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST).then(|| {
        let start = indirect_field::INDIRECT_GREFS.start + 4 * i;
        start..start + 4
    })
}

mod rsp_field {
    use core::ops::Range;
    pub const ID: Range<usize> = 0..8;
    pub const OPERATION: usize = 8;
    pub const STATUS: Range<usize> = 10..12;
}

/// A view of `struct blkif_response` (16 bytes): u64 `id` @0, u8
/// `operation` @8, i16 `status` @10.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlkifResponse<T: AsRef<[u8]>> {
    buffer: T,
}

view_common!(BlkifResponse, "blkif_response", 16);

impl<T: AsRef<[u8]>> BlkifResponse<T> {
    /// The request's id.
    pub fn id(&self) -> u64 {
        get_u64(self.buffer.as_ref(), rsp_field::ID)
    }
    /// The request's operation.
    pub fn operation(&self) -> u8 {
        get_u8(self.buffer.as_ref(), rsp_field::OPERATION)
    }
    /// `BLKIF_RSP_*`.
    pub fn status(&self) -> i16 {
        get_i16(self.buffer.as_ref(), rsp_field::STATUS)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> BlkifResponse<T> {
    /// Sets `id`.
    pub fn set_id(&mut self, v: u64) {
        set_u64(self.buffer.as_mut(), rsp_field::ID, v)
    }
    /// Sets `operation`.
    pub fn set_operation(&mut self, v: u8) {
        set_u8(self.buffer.as_mut(), rsp_field::OPERATION, v)
    }
    /// Sets `status`.
    pub fn set_status(&mut self, v: i16) {
        set_i16(self.buffer.as_mut(), rsp_field::STATUS, v)
    }
}

/// `#[repr(C)]` mirrors of Xen's declarations, checked against the field
/// ranges at compile time.
#[allow(dead_code)]
mod c {
    use super::{discard_field as d, field as f, indirect_field as ind, rsp_field as r, seg_field};
    use crate::abi::ring::SRING_HEADER_SIZE;
    use core::mem::{align_of, offset_of, size_of};

    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct blkif_request_segment {
        pub gref: u32,
        pub first_sect: u8,
        pub last_sect: u8,
    }
    const _: () = assert!(size_of::<blkif_request_segment>() == super::BlkifSegment::SIZE);
    const _: () = assert!(offset_of!(blkif_request_segment, gref) == seg_field::GREF.start);
    const _: () = assert!(offset_of!(blkif_request_segment, first_sect) == seg_field::FIRST_SECT);
    const _: () = assert!(offset_of!(blkif_request_segment, last_sect) == seg_field::LAST_SECT);

    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct blkif_request {
        pub operation: u8,
        pub nr_segments: u8,
        pub handle: u16,
        pub id: u64,
        pub sector_number: u64,
        pub seg: [blkif_request_segment; super::BLKIF_MAX_SEGMENTS_PER_REQUEST],
    }
    const _: () = assert!(size_of::<blkif_request>() == 112);
    const _: () = assert!(offset_of!(blkif_request, operation) == f::OPERATION);
    const _: () = assert!(offset_of!(blkif_request, nr_segments) == f::NR_SEGMENTS);
    const _: () = assert!(offset_of!(blkif_request, handle) == f::HANDLE.start);
    const _: () = assert!(offset_of!(blkif_request, id) == f::ID.start);
    const _: () = assert!(offset_of!(blkif_request, sector_number) == f::SECTOR_NUMBER.start);
    const _: () = assert!(offset_of!(blkif_request, seg) == f::SEG.start);
    const _: () = assert!(
        size_of::<[blkif_request_segment; super::BLKIF_MAX_SEGMENTS_PER_REQUEST]>()
            == f::SEG.end - f::SEG.start
    );

    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct blkif_request_discard {
        pub operation: u8,
        pub flag: u8,
        pub handle: u16,
        pub id: u64,
        pub sector_number: u64,
        pub nr_sectors: u64,
    }
    const _: () = assert!(size_of::<blkif_request_discard>() == 32);
    const _: () = assert!(offset_of!(blkif_request_discard, operation) == d::OPERATION);
    const _: () = assert!(offset_of!(blkif_request_discard, flag) == d::FLAG);
    const _: () = assert!(offset_of!(blkif_request_discard, handle) == d::HANDLE.start);
    const _: () = assert!(offset_of!(blkif_request_discard, id) == d::ID.start);
    const _: () =
        assert!(offset_of!(blkif_request_discard, sector_number) == d::SECTOR_NUMBER.start);
    const _: () = assert!(offset_of!(blkif_request_discard, nr_sectors) == d::NR_SECTORS.start);

    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct blkif_request_indirect {
        pub operation: u8,
        pub indirect_op: u8,
        pub nr_segments: u16,
        pub id: u64,
        pub sector_number: u64,
        pub handle: u16,
        pub indirect_grefs: [u32; super::BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST],
    }
    const _: () = assert!(size_of::<blkif_request_indirect>() == 64);
    const _: () = assert!(offset_of!(blkif_request_indirect, operation) == ind::OPERATION);
    const _: () = assert!(offset_of!(blkif_request_indirect, indirect_op) == ind::INDIRECT_OP);
    const _: () =
        assert!(offset_of!(blkif_request_indirect, nr_segments) == ind::NR_SEGMENTS.start);
    const _: () = assert!(offset_of!(blkif_request_indirect, id) == ind::ID.start);
    const _: () =
        assert!(offset_of!(blkif_request_indirect, sector_number) == ind::SECTOR_NUMBER.start);
    const _: () = assert!(offset_of!(blkif_request_indirect, handle) == ind::HANDLE.start);
    const _: () =
        assert!(offset_of!(blkif_request_indirect, indirect_grefs) == ind::INDIRECT_GREFS.start);
    const _: () = assert!(
        size_of::<[u32; super::BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST]>()
            == ind::INDIRECT_GREFS.end - ind::INDIRECT_GREFS.start
    );

    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct blkif_response {
        pub id: u64,
        pub operation: u8,
        pub status: i16,
    }
    const _: () = assert!(size_of::<blkif_response>() == 16);
    const _: () = assert!(offset_of!(blkif_response, id) == r::ID.start);
    const _: () = assert!(offset_of!(blkif_response, operation) == r::OPERATION);
    const _: () = assert!(offset_of!(blkif_response, status) == r::STATUS.start);

    // DEFINE_RING_TYPES(blkif, ...): the entry union and the shared page.
    #[repr(C)]
    pub union blkif_sring_entry {
        pub req: blkif_request,
        pub rsp: blkif_response,
    }
    #[repr(C)]
    pub struct blkif_sring {
        pub header: [u32; 4],
        pub pvt: [u8; 4],
        pub __pad: [u8; 44],
        pub ring: [blkif_sring_entry; 0],
    }
    const _: () = assert!(size_of::<blkif_sring_entry>() == super::BLKIF_RING_ENTRY_SIZE);
    const _: () = assert!(align_of::<blkif_sring_entry>() == 8);
    const _: () = assert!(offset_of!(blkif_sring, ring) == SRING_HEADER_SIZE);
    // Discard and indirect requests fit in a request slot.
    const _: () = assert!(size_of::<blkif_request_discard>() <= size_of::<blkif_request>());
    const _: () = assert!(size_of::<blkif_request_indirect>() <= size_of::<blkif_request>());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::ring::ring_entries;

    #[test]
    fn constants_match_blkif_h() {
        assert_eq!(
            [
                BLKIF_OP_READ,
                BLKIF_OP_WRITE,
                BLKIF_OP_WRITE_BARRIER,
                BLKIF_OP_FLUSH_DISKCACHE,
                BLKIF_OP_RESERVED_1,
                BLKIF_OP_DISCARD,
                BLKIF_OP_INDIRECT
            ],
            [0, 1, 2, 3, 4, 5, 6]
        );
        assert_eq!(
            [BLKIF_RSP_OKAY, BLKIF_RSP_ERROR, BLKIF_RSP_EOPNOTSUPP],
            [0, -1, -2]
        );
        assert_eq!(BLKIF_MAX_SEGMENTS_PER_REQUEST, 11);
        assert_eq!(BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST, 8);
        assert_eq!(SEGS_PER_INDIRECT_FRAME, 512);
        assert_eq!(BLKIF_SECTOR_SIZE, 512);
        assert_eq!(BLKIF_DISCARD_SECURE, 1);
        assert_eq!([VDISK_CDROM, VDISK_REMOVABLE, VDISK_READONLY], [1, 2, 4]);
    }

    #[test]
    fn ring_sizes() {
        assert_eq!(ring_entries(4096, BLKIF_RING_ENTRY_SIZE), 32);
        assert_eq!(ring_entries(16 * 4096, BLKIF_RING_ENTRY_SIZE), 512);
    }

    #[test]
    fn request_golden_bytes() {
        let mut r = BlkifRequest::new_checked([0u8; 112]).unwrap();
        r.set_operation(BLKIF_OP_WRITE);
        r.set_nr_segments(2);
        r.set_handle(0x0300);
        r.set_id(0x1122_3344_5566_7788);
        r.set_sector_number(0x0102_0304_0506_0708);
        let s0 = BlkifSegment {
            gref: 0x0000_0100,
            first_sect: 0,
            last_sect: 7,
        };
        let s10 = BlkifSegment {
            gref: 0xfedc_ba98,
            first_sect: 3,
            last_sect: 4,
        };
        r.set_segment(0, s0).unwrap();
        r.set_segment(10, s10).unwrap();
        let mut golden = [0u8; 112];
        golden[..24].copy_from_slice(&[
            0x01, 0x02, 0x00, 0x03, 0, 0, 0, 0, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11,
            0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01,
        ]);
        golden[24..32].copy_from_slice(&[0x00, 0x01, 0, 0, 0x00, 0x07, 0, 0]);
        golden[104..112].copy_from_slice(&[0x98, 0xba, 0xdc, 0xfe, 0x03, 0x04, 0, 0]);
        assert_eq!(r.as_bytes(), &golden);

        let v = BlkifRequest::new_checked(&golden[..]).unwrap();
        assert_eq!(v.operation(), BLKIF_OP_WRITE);
        assert_eq!(v.nr_segments(), 2);
        assert_eq!(v.handle(), 0x0300);
        assert_eq!(v.id(), 0x1122_3344_5566_7788);
        assert_eq!(v.sector_number(), 0x0102_0304_0506_0708);
        assert_eq!(v.segment(0), Some(s0));
        assert_eq!(v.segment(1), Some(BlkifSegment::default()));
        assert_eq!(v.segment(10), Some(s10));
        assert_eq!(v.segment(11), None);
        assert_eq!(v.segment(usize::MAX), None);
    }

    #[test]
    fn request_segment_index_is_checked() {
        let mut r = BlkifRequest::new_checked([0u8; 112]).unwrap();
        for i in [11, 12, usize::MAX] {
            assert_eq!(
                r.set_segment(i, BlkifSegment::default()),
                Err(AbiError::BadValue {
                    what: "blkif_request segment index",
                    value: i as u64
                })
            );
        }
        assert_eq!(r.as_bytes(), &[0u8; 112]);
    }

    #[test]
    fn segment_writes_zero_padding() {
        let mut b = [0xffu8; 8];
        let s = BlkifSegment {
            gref: 9,
            first_sect: 1,
            last_sect: 2,
        };
        s.write_to(&mut b).unwrap();
        assert_eq!(b, [9, 0, 0, 0, 1, 2, 0, 0]);
        assert_eq!(s.to_bytes(), b);
        assert_eq!(BlkifSegment::from_bytes(&b), Ok(s));
        assert!(BlkifSegment::from_bytes(&b[..7]).is_err());
        assert!(s.write_to(&mut [0u8; 7]).is_err());
    }

    #[test]
    fn indirect_page_segments() {
        let mut page = vec![0u8; 4096];
        let first = BlkifSegment {
            gref: 0x10,
            first_sect: 0,
            last_sect: 7,
        };
        let last = BlkifSegment {
            gref: 0x0a0b_0c0d,
            first_sect: 2,
            last_sect: 5,
        };
        first.write_to_indirect_page(&mut page, 0).unwrap();
        last.write_to_indirect_page(&mut page, 511).unwrap();
        assert_eq!(&page[..8], &[0x10, 0, 0, 0, 0, 7, 0, 0]);
        assert_eq!(&page[4088..], &[0x0d, 0x0c, 0x0b, 0x0a, 2, 5, 0, 0]);
        assert_eq!(BlkifSegment::from_indirect_page(&page, 0), Ok(first));
        assert_eq!(BlkifSegment::from_indirect_page(&page, 511), Ok(last));
        assert_eq!(
            BlkifSegment::from_indirect_page(&page, 512),
            Err(AbiError::BadValue {
                what: "indirect segment index",
                value: 512
            })
        );
        assert!(first.write_to_indirect_page(&mut page, 512).is_err());
        // A page cut short.
        assert!(BlkifSegment::from_indirect_page(&page[..100], 12).is_err());
        assert!(BlkifSegment::from_indirect_page(&page[..100], 11).is_ok());
        assert_eq!(
            first.write_to_indirect_page(&mut page[..100], 300),
            Err(AbiError::Truncated {
                what: "blkif_request_segment",
                need: 2408,
                got: 100
            })
        );
    }

    #[test]
    fn discard_golden_bytes() {
        let mut r = BlkifRequestDiscard::new_checked([0u8; 112]).unwrap();
        r.set_operation(BLKIF_OP_DISCARD);
        r.set_flag(BLKIF_DISCARD_SECURE);
        r.set_handle(0x0a0b);
        r.set_id(7);
        r.set_sector_number(0x1_0000_0000);
        r.set_nr_sectors(0x800);
        let golden: [u8; 32] = [
            0x05, 0x01, 0x0b, 0x0a, 0, 0, 0, 0, 0x07, 0, 0, 0, 0, 0, 0, 0, //
            0, 0, 0, 0, 0x01, 0, 0, 0, 0x00, 0x08, 0, 0, 0, 0, 0, 0,
        ];
        assert_eq!(r.as_bytes(), &golden);
        assert!(r.into_inner()[32..].iter().all(|&b| b == 0));
        let v = BlkifRequestDiscard::new_checked(&golden[..]).unwrap();
        assert_eq!(v.operation(), BLKIF_OP_DISCARD);
        assert_eq!(v.flag(), BLKIF_DISCARD_SECURE);
        assert_eq!(v.handle(), 0x0a0b);
        assert_eq!(v.id(), 7);
        assert_eq!(v.sector_number(), 0x1_0000_0000);
        assert_eq!(v.nr_sectors(), 0x800);
        // The common prefix reads the same through the direct-request view.
        let mut slot = [0u8; 112];
        slot[..32].copy_from_slice(&golden);
        let d = BlkifRequest::new_checked(&slot[..]).unwrap();
        assert_eq!((d.operation(), d.id(), d.sector_number()), (5, 7, 1 << 32));
    }

    #[test]
    fn indirect_golden_bytes() {
        let mut r = BlkifRequestIndirect::new_checked([0u8; 64]).unwrap();
        r.set_operation(BLKIF_OP_INDIRECT);
        r.set_indirect_op(BLKIF_OP_READ);
        r.set_nr_segments(0x0102);
        r.set_id(0xaabb_ccdd_eeff_0011);
        r.set_sector_number(0x20);
        r.set_handle(0x0033);
        r.set_indirect_gref(0, 0x0000_0044).unwrap();
        r.set_indirect_gref(7, 0x5566_7788).unwrap();
        assert_eq!(
            r.set_indirect_gref(8, 1),
            Err(AbiError::BadValue {
                what: "blkif_request_indirect indirect_grefs index",
                value: 8
            })
        );
        let golden: [u8; 64] = [
            0x06, 0x00, 0x02, 0x01, 0, 0, 0, 0, 0x11, 0x00, 0xff, 0xee, 0xdd, 0xcc, 0xbb, 0xaa,
            0x20, 0, 0, 0, 0, 0, 0, 0, 0x33, 0x00, 0, 0, 0x44, 0, 0, 0, //
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, //
            0, 0, 0, 0, 0, 0, 0, 0, 0x88, 0x77, 0x66, 0x55, 0, 0, 0, 0,
        ];
        assert_eq!(r.as_bytes(), &golden);
        let v = BlkifRequestIndirect::new_checked(&golden[..]).unwrap();
        assert_eq!(v.operation(), BLKIF_OP_INDIRECT);
        assert_eq!(v.indirect_op(), BLKIF_OP_READ);
        assert_eq!(v.nr_segments(), 0x0102);
        assert_eq!(v.id(), 0xaabb_ccdd_eeff_0011);
        assert_eq!(v.sector_number(), 0x20);
        assert_eq!(v.handle(), 0x33);
        assert_eq!(v.indirect_gref(0), Some(0x44));
        assert_eq!(v.indirect_gref(1), Some(0));
        assert_eq!(v.indirect_gref(7), Some(0x5566_7788));
        assert_eq!(v.indirect_gref(8), None);
    }

    #[test]
    fn response_golden_bytes() {
        let mut r = BlkifResponse::new_checked([0u8; 16]).unwrap();
        r.set_id(0x0102_0304_0506_0708);
        r.set_operation(BLKIF_OP_FLUSH_DISKCACHE);
        r.set_status(BLKIF_RSP_EOPNOTSUPP);
        let golden: [u8; 16] = [
            0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01, 0x03, 0, 0xfe, 0xff, 0, 0, 0, 0,
        ];
        assert_eq!(r.as_bytes(), &golden);
        let v = BlkifResponse::new_checked(&golden[..]).unwrap();
        assert_eq!(v.id(), 0x0102_0304_0506_0708);
        assert_eq!(v.operation(), BLKIF_OP_FLUSH_DISKCACHE);
        assert_eq!(v.status(), -2);
    }

    #[test]
    fn short_buffers_are_refused() {
        assert_eq!(
            BlkifRequest::new_checked(&[0u8; 111][..])
                .unwrap_err()
                .to_string(),
            "blkif_request: buffer of 111 bytes is shorter than the 112 the format needs"
        );
        assert!(BlkifRequestDiscard::new_checked(&[0u8; 31][..]).is_err());
        assert!(BlkifRequestIndirect::new_checked(&[0u8; 63][..]).is_err());
        assert!(BlkifResponse::new_checked(&[0u8; 15][..]).is_err());
    }
}
