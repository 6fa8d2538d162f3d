//! Grant-table formats (Xen's `public/grant_table.h`): `grant_entry_v1`, its
//! `GTF_*` flags, the `GNTST_*` status codes, and the `gnttab_copy` /
//! `gnttab_transfer` operation structs.
//!
//! # A note on the seed header
//!
//! The 2004 "first cut" of grant_table.h, from which this project starts,
//! defines `GTF_reading` and `GTF_writing` as `1 << _GTF_inuse`, a macro it
//! never defines. The bit numbers it gives just above them (`_GTF_reading = 3`,
//! `_GTF_writing = 4`) are what every later header uses, and what we use:
//! [`GTF_READING`] is bit 3 and [`GTF_WRITING`] is bit 4.

use super::{get_u16, get_u32, get_u64, set_u16, set_u32, set_u64, view_common};

/// A grant reference: an index into a domain's grant table (u32 since Xen
/// 3.0; u16 in the 2004 seed).
pub type GrantRef = u32;
/// A domain id (`domid_t`).
pub type DomId = u16;

/// Mask of the type field in `flags`.
pub const GTF_TYPE_MASK: u16 = 3;
/// Type: the entry is not in use.
pub const GTF_INVALID: u16 = 0;
/// Type: `domid` may map or copy `frame`.
pub const GTF_PERMIT_ACCESS: u16 = 1;
/// Type: `domid` may transfer a page into this entry.
pub const GTF_ACCEPT_TRANSFER: u16 = 2;
/// Type: transitive grant (grant table v2 only; never valid in v1).
pub const GTF_TRANSITIVE: u16 = 3;

/// permit_access: the grantee may only map read-only (guest writes).
pub const GTF_READONLY: u16 = 1 << 2;
/// permit_access: the grantee has it mapped for reading (hypervisor writes).
pub const GTF_READING: u16 = 1 << 3;
/// permit_access: the grantee has it mapped for writing (hypervisor writes).
pub const GTF_WRITING: u16 = 1 << 4;
/// permit_access cache attribute: page write-through.
pub const GTF_PWT: u16 = 1 << 5;
/// permit_access cache attribute: page cache disable.
pub const GTF_PCD: u16 = 1 << 6;
/// permit_access cache attribute: PAT.
pub const GTF_PAT: u16 = 1 << 7;
/// permit_access: sub-page grant (v2 only).
pub const GTF_SUB_PAGE: u16 = 1 << 8;

/// accept_transfer: the hypervisor has committed to transferring a page.
pub const GTF_TRANSFER_COMMITTED: u16 = 1 << 2;
/// accept_transfer: the transfer is done and `frame` holds the new frame.
pub const GTF_TRANSFER_COMPLETED: u16 = 1 << 3;

/// Grant references 0..8 are reserved (0 console, 1 xenstore).
pub const GNTTAB_NR_RESERVED_ENTRIES: u32 = 8;
/// Reserved reference of the console ring.
pub const GNTTAB_RESERVED_CONSOLE: u32 = 0;
/// Reserved reference of the xenstore ring.
pub const GNTTAB_RESERVED_XENSTORE: u32 = 1;

/// `GNTTABOP_copy` flag: the source is a grant reference (else a frame).
pub const GNTCOPY_SOURCE_GREF: u16 = 1;
/// `GNTTABOP_copy` flag: the destination is a grant reference (else a frame).
pub const GNTCOPY_DEST_GREF: u16 = 2;

/// Hypercall sub-op numbers of `HYPERVISOR_grant_table_op`.
pub mod op {
    /// Map a grant.
    pub const MAP_GRANT_REF: u32 = 0;
    /// Unmap a grant.
    pub const UNMAP_GRANT_REF: u32 = 1;
    /// Set up the table.
    pub const SETUP_TABLE: u32 = 2;
    /// Dump the table (debug).
    pub const DUMP_TABLE: u32 = 3;
    /// Transfer a page.
    pub const TRANSFER: u32 = 4;
    /// Copy between grants/frames.
    pub const COPY: u32 = 5;
}

/// Grant-table operation status codes (`GNTST_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i16)]
pub enum GnttabStatus {
    /// Normal return.
    Okay = 0,
    /// General undefined error.
    GeneralError = -1,
    /// Unrecognised domain id.
    BadDomain = -2,
    /// Unrecognised or inappropriate grant reference.
    BadGntref = -3,
    /// Unrecognised or inappropriate handle.
    BadHandle = -4,
    /// Inappropriate virtual address to map.
    BadVirtAddr = -5,
    /// Inappropriate device address to unmap.
    BadDevAddr = -6,
    /// Out of space in I/O MMU.
    NoDeviceSpace = -7,
    /// Not enough privilege for the operation.
    PermissionDenied = -8,
    /// Specified page was invalid for the operation.
    BadPage = -9,
    /// Copy arguments cross a page boundary.
    BadCopyArg = -10,
    /// Transfer page address too large.
    AddressTooBig = -11,
    /// Operation not done; try again.
    Eagain = -12,
    /// Out of space (handles etc).
    NoSpace = -13,
}

impl GnttabStatus {
    /// All codes, in numeric order from 0 down.
    pub const ALL: [GnttabStatus; 14] = [
        GnttabStatus::Okay,
        GnttabStatus::GeneralError,
        GnttabStatus::BadDomain,
        GnttabStatus::BadGntref,
        GnttabStatus::BadHandle,
        GnttabStatus::BadVirtAddr,
        GnttabStatus::BadDevAddr,
        GnttabStatus::NoDeviceSpace,
        GnttabStatus::PermissionDenied,
        GnttabStatus::BadPage,
        GnttabStatus::BadCopyArg,
        GnttabStatus::AddressTooBig,
        GnttabStatus::Eagain,
        GnttabStatus::NoSpace,
    ];

    /// The status for a raw code, if it is one.
    pub fn from_raw(v: i16) -> Option<GnttabStatus> {
        if (-13..=0).contains(&v) {
            Some(Self::ALL[(-v) as usize])
        } else {
            None
        }
    }

    /// The raw code.
    pub fn raw(self) -> i16 {
        self as i16
    }

    /// Xen's message for the code (`GNTTABOP_error_msgs`), lowercase.
    pub fn message(self) -> &'static str {
        match self {
            GnttabStatus::Okay => "okay",
            GnttabStatus::GeneralError => "undefined error",
            GnttabStatus::BadDomain => "unrecognised domain id",
            GnttabStatus::BadGntref => "invalid grant reference",
            GnttabStatus::BadHandle => "invalid mapping handle",
            GnttabStatus::BadVirtAddr => "invalid virtual address",
            GnttabStatus::BadDevAddr => "invalid device address",
            GnttabStatus::NoDeviceSpace => "no spare translation slot in the i/o mmu",
            GnttabStatus::PermissionDenied => "permission denied",
            GnttabStatus::BadPage => "bad page",
            GnttabStatus::BadCopyArg => "copy arguments cross page boundary",
            GnttabStatus::AddressTooBig => "page address size too large",
            GnttabStatus::Eagain => "operation not done; try again",
            GnttabStatus::NoSpace => "out of space",
        }
    }
}

impl core::fmt::Display for GnttabStatus {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} (GNTST {})", self.message(), self.raw())
    }
}

mod field {
    use core::ops::Range;
    pub const FLAGS: Range<usize> = 0..2;
    pub const DOMID: Range<usize> = 2..4;
    pub const FRAME: Range<usize> = 4..8;
}

/// A view of one `grant_entry_v1` (8 bytes: u16 flags, u16 domid, u32 frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantEntry<T: AsRef<[u8]>> {
    buffer: T,
}

view_common!(GrantEntry, "grant_entry_v1", 8);

impl<T: AsRef<[u8]>> GrantEntry<T> {
    /// `flags`: type and sub-flags.
    pub fn flags(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::FLAGS)
    }
    /// The type part of `flags` (`GTF_INVALID` .. `GTF_TRANSITIVE`).
    pub fn entry_type(&self) -> u16 {
        self.flags() & GTF_TYPE_MASK
    }
    /// The domain the entry is for.
    pub fn domid(&self) -> DomId {
        get_u16(self.buffer.as_ref(), field::DOMID)
    }
    /// The frame granted (permit_access) or received (accept_transfer).
    pub fn frame(&self) -> u32 {
        get_u32(self.buffer.as_ref(), field::FRAME)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> GrantEntry<T> {
    /// Sets `flags`.
    pub fn set_flags(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), field::FLAGS, v)
    }
    /// Sets `domid`.
    pub fn set_domid(&mut self, v: DomId) {
        set_u16(self.buffer.as_mut(), field::DOMID, v)
    }
    /// Sets `frame`.
    pub fn set_frame(&mut self, v: u32) {
        set_u32(self.buffer.as_mut(), field::FRAME, v)
    }
}

/// Byte offset of `flags` in an entry; `flags | domid << 16` is the entry's
/// first 32-bit word, the unit the hypervisor compares-and-swaps.
pub const ENTRY_FLAGS_OFFSET: usize = field::FLAGS.start;
/// Byte offset of `frame` in an entry.
pub const ENTRY_FRAME_OFFSET: usize = field::FRAME.start;

mod copy_field {
    use core::ops::Range;
    pub const SRC_U: Range<usize> = 0..8;
    pub const SRC_DOMID: Range<usize> = 8..10;
    pub const SRC_OFFSET: Range<usize> = 10..12;
    pub const DST_U: Range<usize> = 16..24;
    pub const DST_DOMID: Range<usize> = 24..26;
    pub const DST_OFFSET: Range<usize> = 26..28;
    pub const LEN: Range<usize> = 32..34;
    pub const FLAGS: Range<usize> = 34..36;
    pub const STATUS: Range<usize> = 36..38;
}

/// A view of `struct gnttab_copy` (40 bytes): source and destination
/// `{union {ref, gmfn}, domid, offset}`, `len`, `flags`, `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GnttabCopy<T: AsRef<[u8]>> {
    buffer: T,
}

view_common!(GnttabCopy, "gnttab_copy", 40);

impl<T: AsRef<[u8]>> GnttabCopy<T> {
    /// Source: grant reference (with `GNTCOPY_SOURCE_GREF`) or frame.
    pub fn source_ref_or_gmfn(&self) -> u64 {
        get_u64(self.buffer.as_ref(), copy_field::SRC_U)
    }
    /// Source domain.
    pub fn source_domid(&self) -> DomId {
        get_u16(self.buffer.as_ref(), copy_field::SRC_DOMID)
    }
    /// Offset within the source page.
    pub fn source_offset(&self) -> u16 {
        get_u16(self.buffer.as_ref(), copy_field::SRC_OFFSET)
    }
    /// Destination: grant reference (with `GNTCOPY_DEST_GREF`) or frame.
    pub fn dest_ref_or_gmfn(&self) -> u64 {
        get_u64(self.buffer.as_ref(), copy_field::DST_U)
    }
    /// Destination domain.
    pub fn dest_domid(&self) -> DomId {
        get_u16(self.buffer.as_ref(), copy_field::DST_DOMID)
    }
    /// Offset within the destination page.
    pub fn dest_offset(&self) -> u16 {
        get_u16(self.buffer.as_ref(), copy_field::DST_OFFSET)
    }
    /// Bytes to copy.
    pub fn len(&self) -> u16 {
        get_u16(self.buffer.as_ref(), copy_field::LEN)
    }
    /// True when `len` is 0.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// `GNTCOPY_*` flags.
    pub fn flags(&self) -> u16 {
        get_u16(self.buffer.as_ref(), copy_field::FLAGS)
    }
    /// Result, written by the hypervisor.
    pub fn status(&self) -> i16 {
        get_u16(self.buffer.as_ref(), copy_field::STATUS) as i16
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> GnttabCopy<T> {
    /// Sets the source reference or frame. A grant reference is a u32 in
    /// the union's first four bytes; the upper four are then zero.
    pub fn set_source_ref_or_gmfn(&mut self, v: u64) {
        set_u64(self.buffer.as_mut(), copy_field::SRC_U, v)
    }
    /// Sets the source domain.
    pub fn set_source_domid(&mut self, v: DomId) {
        set_u16(self.buffer.as_mut(), copy_field::SRC_DOMID, v)
    }
    /// Sets the source offset.
    pub fn set_source_offset(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), copy_field::SRC_OFFSET, v)
    }
    /// Sets the destination reference or frame.
    pub fn set_dest_ref_or_gmfn(&mut self, v: u64) {
        set_u64(self.buffer.as_mut(), copy_field::DST_U, v)
    }
    /// Sets the destination domain.
    pub fn set_dest_domid(&mut self, v: DomId) {
        set_u16(self.buffer.as_mut(), copy_field::DST_DOMID, v)
    }
    /// Sets the destination offset.
    pub fn set_dest_offset(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), copy_field::DST_OFFSET, v)
    }
    /// Sets the length.
    pub fn set_len(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), copy_field::LEN, v)
    }
    /// Sets the flags.
    pub fn set_flags(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), copy_field::FLAGS, v)
    }
    /// Sets the status.
    pub fn set_status(&mut self, v: i16) {
        set_u16(self.buffer.as_mut(), copy_field::STATUS, v as u16)
    }
}

mod transfer_field {
    use core::ops::Range;
    pub const MFN: Range<usize> = 0..8;
    pub const DOMID: Range<usize> = 8..10;
    pub const REF: Range<usize> = 12..16;
    pub const STATUS: Range<usize> = 16..18;
}

/// A view of `struct gnttab_transfer` (24 bytes on x86_64): `xen_pfn_t mfn`,
/// `domid_t domid`, `grant_ref_t ref`, `int16_t status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GnttabTransfer<T: AsRef<[u8]>> {
    buffer: T,
}

view_common!(GnttabTransfer, "gnttab_transfer", 24);

impl<T: AsRef<[u8]>> GnttabTransfer<T> {
    /// The frame given away.
    pub fn mfn(&self) -> u64 {
        get_u64(self.buffer.as_ref(), transfer_field::MFN)
    }
    /// The receiving domain.
    pub fn domid(&self) -> DomId {
        get_u16(self.buffer.as_ref(), transfer_field::DOMID)
    }
    /// The receiver's accept_transfer reference.
    pub fn gref(&self) -> GrantRef {
        get_u32(self.buffer.as_ref(), transfer_field::REF)
    }
    /// Result, written by the hypervisor.
    pub fn status(&self) -> i16 {
        get_u16(self.buffer.as_ref(), transfer_field::STATUS) as i16
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> GnttabTransfer<T> {
    /// Sets the frame.
    pub fn set_mfn(&mut self, v: u64) {
        set_u64(self.buffer.as_mut(), transfer_field::MFN, v)
    }
    /// Sets the receiving domain.
    pub fn set_domid(&mut self, v: DomId) {
        set_u16(self.buffer.as_mut(), transfer_field::DOMID, v)
    }
    /// Sets the reference.
    pub fn set_gref(&mut self, v: GrantRef) {
        set_u32(self.buffer.as_mut(), transfer_field::REF, v)
    }
    /// Sets the status.
    pub fn set_status(&mut self, v: i16) {
        set_u16(self.buffer.as_mut(), transfer_field::STATUS, v as u16)
    }
}

/// `#[repr(C)]` mirrors of Xen's declarations, checked against the field
/// ranges at compile time.
#[allow(dead_code)]
mod c {
    use core::mem::{offset_of, size_of};

    #[repr(C)]
    pub struct grant_entry_v1 {
        pub flags: u16,
        pub domid: u16,
        pub frame: u32,
    }
    const _: () = assert!(size_of::<grant_entry_v1>() == 8);
    const _: () = assert!(offset_of!(grant_entry_v1, flags) == super::field::FLAGS.start);
    const _: () = assert!(offset_of!(grant_entry_v1, domid) == super::field::DOMID.start);
    const _: () = assert!(offset_of!(grant_entry_v1, frame) == super::field::FRAME.start);

    #[repr(C)]
    pub struct gnttab_copy_ptr {
        pub u: u64, // union { grant_ref_t ref; xen_pfn_t gmfn; }
        pub domid: u16,
        pub offset: u16,
    }
    #[repr(C)]
    pub struct gnttab_copy {
        pub source: gnttab_copy_ptr,
        pub dest: gnttab_copy_ptr,
        pub len: u16,
        pub flags: u16,
        pub status: i16,
    }
    const _: () = assert!(size_of::<gnttab_copy>() == 40);
    const _: () = assert!(offset_of!(gnttab_copy, source) == super::copy_field::SRC_U.start);
    const _: () = assert!(
        offset_of!(gnttab_copy, source) + offset_of!(gnttab_copy_ptr, domid)
            == super::copy_field::SRC_DOMID.start
    );
    const _: () = assert!(
        offset_of!(gnttab_copy, source) + offset_of!(gnttab_copy_ptr, offset)
            == super::copy_field::SRC_OFFSET.start
    );
    const _: () = assert!(offset_of!(gnttab_copy, dest) == super::copy_field::DST_U.start);
    const _: () = assert!(
        offset_of!(gnttab_copy, dest) + offset_of!(gnttab_copy_ptr, domid)
            == super::copy_field::DST_DOMID.start
    );
    const _: () = assert!(
        offset_of!(gnttab_copy, dest) + offset_of!(gnttab_copy_ptr, offset)
            == super::copy_field::DST_OFFSET.start
    );
    const _: () = assert!(offset_of!(gnttab_copy, len) == super::copy_field::LEN.start);
    const _: () = assert!(offset_of!(gnttab_copy, flags) == super::copy_field::FLAGS.start);
    const _: () = assert!(offset_of!(gnttab_copy, status) == super::copy_field::STATUS.start);

    #[repr(C)]
    pub struct gnttab_transfer {
        pub mfn: u64,
        pub domid: u16,
        pub r#ref: u32,
        pub status: i16,
    }
    const _: () = assert!(size_of::<gnttab_transfer>() == 24);
    const _: () = assert!(offset_of!(gnttab_transfer, mfn) == super::transfer_field::MFN.start);
    const _: () = assert!(offset_of!(gnttab_transfer, domid) == super::transfer_field::DOMID.start);
    const _: () = assert!(offset_of!(gnttab_transfer, r#ref) == super::transfer_field::REF.start);
    const _: () =
        assert!(offset_of!(gnttab_transfer, status) == super::transfer_field::STATUS.start);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gtf_constants_match_grant_table_h() {
        assert_eq!(
            [
                GTF_INVALID,
                GTF_PERMIT_ACCESS,
                GTF_ACCEPT_TRANSFER,
                GTF_TRANSITIVE
            ],
            [0, 1, 2, 3]
        );
        assert_eq!(GTF_READONLY, 0x4);
        assert_eq!(
            GTF_READING, 0x8,
            "bit 3, not the seed's undefined _GTF_inuse"
        );
        assert_eq!(
            GTF_WRITING, 0x10,
            "bit 4, not the seed's undefined _GTF_inuse"
        );
        assert_eq!(
            [GTF_PWT, GTF_PCD, GTF_PAT, GTF_SUB_PAGE],
            [0x20, 0x40, 0x80, 0x100]
        );
        assert_eq!(GTF_TRANSFER_COMMITTED, 0x4);
        assert_eq!(GTF_TRANSFER_COMPLETED, 0x8);
        assert_eq!(GNTTAB_NR_RESERVED_ENTRIES, 8);
    }

    #[test]
    fn grant_entry_golden_bytes() {
        // permit_access, readonly, to domain 7, frame 0x12345678.
        let golden = [0x05, 0x00, 0x07, 0x00, 0x78, 0x56, 0x34, 0x12];
        let mut e = GrantEntry::new_checked([0u8; 8]).unwrap();
        e.set_domid(7);
        e.set_frame(0x1234_5678);
        e.set_flags(GTF_PERMIT_ACCESS | GTF_READONLY);
        assert_eq!(e.as_bytes(), &golden);
        let v = GrantEntry::new_checked(&golden[..]).unwrap();
        assert_eq!(v.entry_type(), GTF_PERMIT_ACCESS);
        assert_eq!(v.flags() & GTF_READONLY, GTF_READONLY);
        assert_eq!(v.domid(), 7);
        assert_eq!(v.frame(), 0x1234_5678);
    }

    #[test]
    fn grant_entry_short_buffer_is_refused() {
        let err = GrantEntry::new_checked(&[0u8; 7][..]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "grant_entry_v1: buffer of 7 bytes is shorter than the 8 the format needs"
        );
    }

    #[test]
    fn gnttab_copy_golden_bytes() {
        let mut c = GnttabCopy::new_checked([0u8; 40]).unwrap();
        c.set_source_ref_or_gmfn(0x0102_0304);
        c.set_source_domid(3);
        c.set_source_offset(0x10);
        c.set_dest_ref_or_gmfn(0xaabb_ccdd_eeff_0011);
        c.set_dest_domid(0x7ff0);
        c.set_dest_offset(0x800);
        c.set_len(0x200);
        c.set_flags(GNTCOPY_SOURCE_GREF);
        c.set_status(GnttabStatus::BadCopyArg.raw());
        let golden: [u8; 40] = [
            0x04, 0x03, 0x02, 0x01, 0, 0, 0, 0, 0x03, 0x00, 0x10, 0x00, 0, 0, 0, 0, //
            0x11, 0x00, 0xff, 0xee, 0xdd, 0xcc, 0xbb, 0xaa, 0xf0, 0x7f, 0x00, 0x08, 0, 0, 0, 0,
            0x00, 0x02, 0x01, 0x00, 0xf6, 0xff, 0, 0,
        ];
        assert_eq!(c.as_bytes(), &golden);
        let v = GnttabCopy::new_checked(&golden[..]).unwrap();
        assert_eq!(v.source_ref_or_gmfn(), 0x0102_0304);
        assert_eq!(v.dest_domid(), 0x7ff0);
        assert_eq!(v.dest_offset(), 0x800);
        assert_eq!(v.len(), 0x200);
        assert_eq!(v.status(), -10);
    }

    #[test]
    fn gnttab_transfer_golden_bytes() {
        let mut t = GnttabTransfer::new_checked([0u8; 24]).unwrap();
        t.set_mfn(0x1_0000_0002);
        t.set_domid(1);
        t.set_gref(9);
        t.set_status(-3);
        let golden: [u8; 24] = [
            0x02, 0, 0, 0, 0x01, 0, 0, 0, 0x01, 0x00, 0, 0, 0x09, 0, 0, 0, 0xfd, 0xff, 0, 0, 0, 0,
            0, 0,
        ];
        assert_eq!(t.as_bytes(), &golden);
        let v = GnttabTransfer::new_checked(&golden[..]).unwrap();
        assert_eq!(
            (v.mfn(), v.domid(), v.gref(), v.status()),
            (0x1_0000_0002, 1, 9, -3)
        );
    }

    #[test]
    fn status_codes_round_trip() {
        for (i, s) in GnttabStatus::ALL.iter().enumerate() {
            assert_eq!(s.raw(), -(i as i16));
            assert_eq!(GnttabStatus::from_raw(s.raw()), Some(*s));
        }
        assert_eq!(GnttabStatus::PermissionDenied.raw(), -8);
        assert_eq!(GnttabStatus::from_raw(-14), None);
        assert_eq!(GnttabStatus::from_raw(1), None);
        assert_eq!(
            GnttabStatus::BadGntref.to_string(),
            "invalid grant reference (GNTST -3)"
        );
    }
}
