//! The XenStore wire format (Xen's `public/io/xs_wire.h`, `struct
//! xsd_sockmsg` and `enum xsd_sockmsg_type`; semantics in
//! `docs/misc/xenstore.txt`): the 16-byte message header, the message types,
//! the size limits, and the error names an `XS_ERROR` reply carries.
//!
//! # Layout
//!
//! ```text
//!  0        4         8        12       16
//!  +--------+---------+--------+--------+------------------------
//!  | type   | req_id  | tx_id  | len    | len bytes of payload
//!  +--------+---------+--------+--------+------------------------
//! ```
//!
//! `len` never exceeds [`XENSTORE_PAYLOAD_MAX`]. A reply echoes the request's
//! `req_id` and `tx_id`; a watch event has both 0. An error reply has type
//! [`XsType::Error`] and the error's name ([`XsErrno::as_str`]) followed by a
//! NUL as payload.
//!
//! This module holds the format only; the codec is in `crate::xenstore`.

use super::{get_u32, set_u32, view_common};

/// Largest payload a message may carry (bytes after the header).
pub const XENSTORE_PAYLOAD_MAX: usize = 4096;
/// Longest absolute path (starting with `/`) a server accepts.
pub const XENSTORE_ABS_PATH_MAX: usize = 3072;
/// Longest relative path (resolved against the domain's home) a server
/// accepts.
pub const XENSTORE_REL_PATH_MAX: usize = 2048;
/// A type number guaranteed never to name a message type (`XS_INVALID`).
pub const XS_INVALID: u32 = 0xffff;

/// Server feature bits (`XENSTORE_SERVER_FEATURE_*`): what GET_FEATURE
/// answers (as a decimal number) and SET_FEATURE takes, and what a ring
/// page's `server_features` field holds.
pub mod feature {
    /// The ring can be reconnected (ring pages only).
    pub const RECONNECTION: u32 = 1;
    /// The ring page's `error` field is present (ring pages only).
    pub const ERROR: u32 = 2;
    /// `XS_WATCH` takes a `<depth>` argument.
    pub const WATCHDEPTH: u32 = 4;
    /// Permissions may name `DOMID_ANY`.
    pub const DOMID_ANY: u32 = 8;
}

/// XenStore message types (`XS_*`), with their wire numbers.
///
/// Number 20 is unassigned: it belonged to a request Xen has since removed,
/// and [`XsType::from_raw`] refuses it. `XS_DEBUG` is another name for
/// [`XsType::Control`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum XsType {
    /// `XS_CONTROL` (also `XS_DEBUG`): implementation-specific commands.
    Control = 0,
    /// `XS_DIRECTORY`: list a node's children.
    Directory = 1,
    /// `XS_READ`: read a node's value.
    Read = 2,
    /// `XS_GET_PERMS`: read a node's permissions.
    GetPerms = 3,
    /// `XS_WATCH`: set a watch.
    Watch = 4,
    /// `XS_UNWATCH`: remove a watch.
    Unwatch = 5,
    /// `XS_TRANSACTION_START`: open a transaction.
    TransactionStart = 6,
    /// `XS_TRANSACTION_END`: commit or abort a transaction.
    TransactionEnd = 7,
    /// `XS_INTRODUCE`: tell the store about a new domain (privileged).
    Introduce = 8,
    /// `XS_RELEASE`: tell the store a domain is gone (privileged).
    Release = 9,
    /// `XS_GET_DOMAIN_PATH`: the home path of a domain.
    GetDomainPath = 10,
    /// `XS_WRITE`: write a node's value.
    Write = 11,
    /// `XS_MKDIR`: create a node.
    Mkdir = 12,
    /// `XS_RM`: remove a node and everything below it.
    Rm = 13,
    /// `XS_SET_PERMS`: set a node's permissions.
    SetPerms = 14,
    /// `XS_WATCH_EVENT`: a watch fired (server to client, unsolicited).
    WatchEvent = 15,
    /// `XS_ERROR`: an error reply; the payload is the errno name.
    Error = 16,
    /// `XS_IS_DOMAIN_INTRODUCED`: whether a domain is known.
    IsDomainIntroduced = 17,
    /// `XS_RESUME`: clear a domain's shutdown flag (privileged).
    Resume = 18,
    /// `XS_SET_TARGET`: let a domain act for another (privileged).
    SetTarget = 19,
    /// `XS_RESET_WATCHES`: drop all of the connection's watches and
    /// transactions.
    ResetWatches = 21,
    /// `XS_DIRECTORY_PART`: list children in pieces, for long lists.
    DirectoryPart = 22,
    /// `XS_GET_FEATURE`: read a domain's feature bits.
    GetFeature = 23,
    /// `XS_SET_FEATURE`: set a domain's feature bits (privileged).
    SetFeature = 24,
    /// `XS_GET_QUOTA`: read quota values.
    GetQuota = 25,
    /// `XS_SET_QUOTA`: set quota values (privileged).
    SetQuota = 26,
}

impl XsType {
    /// Every type, in numeric order.
    pub const ALL: [XsType; 26] = [
        XsType::Control,
        XsType::Directory,
        XsType::Read,
        XsType::GetPerms,
        XsType::Watch,
        XsType::Unwatch,
        XsType::TransactionStart,
        XsType::TransactionEnd,
        XsType::Introduce,
        XsType::Release,
        XsType::GetDomainPath,
        XsType::Write,
        XsType::Mkdir,
        XsType::Rm,
        XsType::SetPerms,
        XsType::WatchEvent,
        XsType::Error,
        XsType::IsDomainIntroduced,
        XsType::Resume,
        XsType::SetTarget,
        XsType::ResetWatches,
        XsType::DirectoryPart,
        XsType::GetFeature,
        XsType::SetFeature,
        XsType::GetQuota,
        XsType::SetQuota,
    ];

    /// The type with wire number `v`, if there is one (20 and anything above
    /// 26 are not types).
    pub fn from_raw(v: u32) -> Option<XsType> {
        Self::ALL.iter().copied().find(|t| t.raw() == v)
    }

    /// The wire number.
    pub fn raw(self) -> u32 {
        self as u32
    }

    /// The C name without its `XS_` prefix, e.g. `"READ"`, `"WATCH_EVENT"`.
    pub fn name(self) -> &'static str {
        match self {
            XsType::Control => "CONTROL",
            XsType::Directory => "DIRECTORY",
            XsType::Read => "READ",
            XsType::GetPerms => "GET_PERMS",
            XsType::Watch => "WATCH",
            XsType::Unwatch => "UNWATCH",
            XsType::TransactionStart => "TRANSACTION_START",
            XsType::TransactionEnd => "TRANSACTION_END",
            XsType::Introduce => "INTRODUCE",
            XsType::Release => "RELEASE",
            XsType::GetDomainPath => "GET_DOMAIN_PATH",
            XsType::Write => "WRITE",
            XsType::Mkdir => "MKDIR",
            XsType::Rm => "RM",
            XsType::SetPerms => "SET_PERMS",
            XsType::WatchEvent => "WATCH_EVENT",
            XsType::Error => "ERROR",
            XsType::IsDomainIntroduced => "IS_DOMAIN_INTRODUCED",
            XsType::Resume => "RESUME",
            XsType::SetTarget => "SET_TARGET",
            XsType::ResetWatches => "RESET_WATCHES",
            XsType::DirectoryPart => "DIRECTORY_PART",
            XsType::GetFeature => "GET_FEATURE",
            XsType::SetFeature => "SET_FEATURE",
            XsType::GetQuota => "GET_QUOTA",
            XsType::SetQuota => "SET_QUOTA",
        }
    }
}

impl core::fmt::Display for XsType {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// The error names XenStore sends in an `XS_ERROR` reply, in the order of
/// xs_wire.h's table, with the Linux errno each stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum XsErrno {
    /// Invalid argument.
    Einval,
    /// Permission denied.
    Eacces,
    /// The node exists.
    Eexist,
    /// The node is a directory (has children where a value was expected).
    Eisdir,
    /// No such node.
    Enoent,
    /// Out of memory.
    Enomem,
    /// Out of space (a quota is exhausted).
    Enospc,
    /// I/O error.
    Eio,
    /// The node has children.
    Enotempty,
    /// Not implemented.
    Enosys,
    /// Read-only.
    Erofs,
    /// Busy.
    Ebusy,
    /// Try again (a transaction conflicted).
    Eagain,
    /// Already connected (the domain is already introduced).
    Eisconn,
    /// Too big (a payload or path is over its limit).
    E2big,
    /// Operation not permitted.
    Eperm,
}

impl XsErrno {
    /// Every error, in xs_wire.h's order.
    pub const ALL: [XsErrno; 16] = [
        XsErrno::Einval,
        XsErrno::Eacces,
        XsErrno::Eexist,
        XsErrno::Eisdir,
        XsErrno::Enoent,
        XsErrno::Enomem,
        XsErrno::Enospc,
        XsErrno::Eio,
        XsErrno::Enotempty,
        XsErrno::Enosys,
        XsErrno::Erofs,
        XsErrno::Ebusy,
        XsErrno::Eagain,
        XsErrno::Eisconn,
        XsErrno::E2big,
        XsErrno::Eperm,
    ];

    /// The name as sent on the wire (without the NUL), e.g. `"EINVAL"`.
    pub fn as_str(self) -> &'static str {
        match self {
            XsErrno::Einval => "EINVAL",
            XsErrno::Eacces => "EACCES",
            XsErrno::Eexist => "EEXIST",
            XsErrno::Eisdir => "EISDIR",
            XsErrno::Enoent => "ENOENT",
            XsErrno::Enomem => "ENOMEM",
            XsErrno::Enospc => "ENOSPC",
            XsErrno::Eio => "EIO",
            XsErrno::Enotempty => "ENOTEMPTY",
            XsErrno::Enosys => "ENOSYS",
            XsErrno::Erofs => "EROFS",
            XsErrno::Ebusy => "EBUSY",
            XsErrno::Eagain => "EAGAIN",
            XsErrno::Eisconn => "EISCONN",
            XsErrno::E2big => "E2BIG",
            XsErrno::Eperm => "EPERM",
        }
    }

    /// The error with wire name `name` (exact, case-sensitive, no NUL).
    pub fn from_name(name: &str) -> Option<XsErrno> {
        Self::ALL.iter().copied().find(|e| e.as_str() == name)
    }

    /// The Linux errno value.
    pub fn errno(self) -> i32 {
        match self {
            XsErrno::Einval => 22,
            XsErrno::Eacces => 13,
            XsErrno::Eexist => 17,
            XsErrno::Eisdir => 21,
            XsErrno::Enoent => 2,
            XsErrno::Enomem => 12,
            XsErrno::Enospc => 28,
            XsErrno::Eio => 5,
            XsErrno::Enotempty => 39,
            XsErrno::Enosys => 38,
            XsErrno::Erofs => 30,
            XsErrno::Ebusy => 16,
            XsErrno::Eagain => 11,
            XsErrno::Eisconn => 106,
            XsErrno::E2big => 7,
            XsErrno::Eperm => 1,
        }
    }

    /// The error whose Linux errno is `errno`, if XenStore has a name for it.
    pub fn from_errno(errno: i32) -> Option<XsErrno> {
        Self::ALL.iter().copied().find(|e| e.errno() == errno)
    }
}

impl core::fmt::Display for XsErrno {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

mod field {
    use core::ops::Range;
    pub const TYPE: Range<usize> = 0..4;
    pub const REQ_ID: Range<usize> = 4..8;
    pub const TX_ID: Range<usize> = 8..12;
    pub const LEN: Range<usize> = 12..16;
}

/// A view of the 16-byte message header `struct xsd_sockmsg`: u32 `type`,
/// u32 `req_id`, u32 `tx_id`, u32 `len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XsHeader<T: AsRef<[u8]>> {
    buffer: T,
}

view_common!(XsHeader, "xsd_sockmsg", 16);

impl<T: AsRef<[u8]>> XsHeader<T> {
    /// The raw `type` field (any u32; see [`Self::xs_type`]).
    pub fn msg_type(&self) -> u32 {
        get_u32(self.buffer.as_ref(), field::TYPE)
    }
    /// The message type, if `type` names one.
    pub fn xs_type(&self) -> Option<XsType> {
        XsType::from_raw(self.msg_type())
    }
    /// Request id, chosen by the client and echoed in the reply.
    pub fn req_id(&self) -> u32 {
        get_u32(self.buffer.as_ref(), field::REQ_ID)
    }
    /// Transaction id (0 outside a transaction).
    pub fn tx_id(&self) -> u32 {
        get_u32(self.buffer.as_ref(), field::TX_ID)
    }
    /// Length of the payload that follows the header (unchecked: compare
    /// with [`XENSTORE_PAYLOAD_MAX`]).
    pub fn len(&self) -> u32 {
        get_u32(self.buffer.as_ref(), field::LEN)
    }
    /// True when no payload follows (`len` is 0).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> XsHeader<T> {
    /// Sets the raw `type` field.
    pub fn set_msg_type(&mut self, v: u32) {
        set_u32(self.buffer.as_mut(), field::TYPE, v)
    }
    /// Sets `type` from a message type.
    pub fn set_xs_type(&mut self, t: XsType) {
        self.set_msg_type(t.raw())
    }
    /// Sets `req_id`.
    pub fn set_req_id(&mut self, v: u32) {
        set_u32(self.buffer.as_mut(), field::REQ_ID, v)
    }
    /// Sets `tx_id`.
    pub fn set_tx_id(&mut self, v: u32) {
        set_u32(self.buffer.as_mut(), field::TX_ID, v)
    }
    /// Sets `len`.
    pub fn set_len(&mut self, v: u32) {
        set_u32(self.buffer.as_mut(), field::LEN, v)
    }
}

/// `#[repr(C)]` mirrors of Xen's declarations, checked against the field
/// ranges at compile time.
#[allow(dead_code)]
mod c {
    use core::mem::{offset_of, size_of};

    #[repr(C)]
    pub struct xsd_sockmsg {
        pub r#type: u32,
        pub req_id: u32,
        pub tx_id: u32,
        pub len: u32,
    }
    const _: () = assert!(size_of::<xsd_sockmsg>() == 16);
    const _: () = assert!(offset_of!(xsd_sockmsg, r#type) == super::field::TYPE.start);
    const _: () = assert!(offset_of!(xsd_sockmsg, req_id) == super::field::REQ_ID.start);
    const _: () = assert!(offset_of!(xsd_sockmsg, tx_id) == super::field::TX_ID.start);
    const _: () = assert!(offset_of!(xsd_sockmsg, len) == super::field::LEN.start);
    // The enum's wire numbers are u32 (`type` is a uint32_t).
    const _: () = assert!(size_of::<super::XsType>() == 4);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_match_xs_wire_h() {
        assert_eq!(XENSTORE_PAYLOAD_MAX, 4096);
        assert_eq!(XENSTORE_ABS_PATH_MAX, 3072);
        assert_eq!(XENSTORE_REL_PATH_MAX, 2048);
        assert_eq!(XS_INVALID, 0xffff);
        assert_eq!(
            [
                feature::RECONNECTION,
                feature::ERROR,
                feature::WATCHDEPTH,
                feature::DOMID_ANY
            ],
            [1, 2, 4, 8]
        );
    }

    #[test]
    fn type_numbers_and_names() {
        let expected: [(u32, &str); 26] = [
            (0, "CONTROL"),
            (1, "DIRECTORY"),
            (2, "READ"),
            (3, "GET_PERMS"),
            (4, "WATCH"),
            (5, "UNWATCH"),
            (6, "TRANSACTION_START"),
            (7, "TRANSACTION_END"),
            (8, "INTRODUCE"),
            (9, "RELEASE"),
            (10, "GET_DOMAIN_PATH"),
            (11, "WRITE"),
            (12, "MKDIR"),
            (13, "RM"),
            (14, "SET_PERMS"),
            (15, "WATCH_EVENT"),
            (16, "ERROR"),
            (17, "IS_DOMAIN_INTRODUCED"),
            (18, "RESUME"),
            (19, "SET_TARGET"),
            (21, "RESET_WATCHES"),
            (22, "DIRECTORY_PART"),
            (23, "GET_FEATURE"),
            (24, "SET_FEATURE"),
            (25, "GET_QUOTA"),
            (26, "SET_QUOTA"),
        ];
        for (t, (raw, name)) in XsType::ALL.iter().zip(expected) {
            assert_eq!(t.raw(), raw);
            assert_eq!(t.name(), name);
            assert_eq!(t.to_string(), name);
            assert_eq!(XsType::from_raw(raw), Some(*t));
        }
        for bad in [20, 27, 28, XS_INVALID, u32::MAX] {
            assert_eq!(XsType::from_raw(bad), None, "{bad}");
        }
    }

    #[test]
    fn errno_names_and_values() {
        let expected: [(&str, i32); 16] = [
            ("EINVAL", 22),
            ("EACCES", 13),
            ("EEXIST", 17),
            ("EISDIR", 21),
            ("ENOENT", 2),
            ("ENOMEM", 12),
            ("ENOSPC", 28),
            ("EIO", 5),
            ("ENOTEMPTY", 39),
            ("ENOSYS", 38),
            ("EROFS", 30),
            ("EBUSY", 16),
            ("EAGAIN", 11),
            ("EISCONN", 106),
            ("E2BIG", 7),
            ("EPERM", 1),
        ];
        for (e, (name, errno)) in XsErrno::ALL.iter().zip(expected) {
            assert_eq!(e.as_str(), name);
            assert_eq!(e.to_string(), name);
            assert_eq!(e.errno(), errno);
            assert_eq!(XsErrno::from_name(name), Some(*e));
            assert_eq!(XsErrno::from_errno(errno), Some(*e));
        }
        for bad in ["", "einval", "EINVAL\0", " EINVAL", "EWOULDBLOCK", "OK"] {
            assert_eq!(XsErrno::from_name(bad), None, "{bad:?}");
        }
        assert_eq!(XsErrno::from_errno(0), None);
        assert_eq!(XsErrno::from_errno(-22), None);
    }

    #[test]
    fn header_golden_bytes() {
        let mut h = XsHeader::new_checked([0u8; 16]).unwrap();
        h.set_xs_type(XsType::WatchEvent);
        h.set_req_id(0x0102_0304);
        h.set_tx_id(0xa0b0_c0d0);
        h.set_len(0x1000);
        let golden: [u8; 16] = [
            0x0f, 0, 0, 0, 0x04, 0x03, 0x02, 0x01, 0xd0, 0xc0, 0xb0, 0xa0, 0x00, 0x10, 0, 0,
        ];
        assert_eq!(h.as_bytes(), &golden);
        let v = XsHeader::new_checked(&golden[..]).unwrap();
        assert_eq!(v.msg_type(), 15);
        assert_eq!(v.xs_type(), Some(XsType::WatchEvent));
        assert_eq!(v.req_id(), 0x0102_0304);
        assert_eq!(v.tx_id(), 0xa0b0_c0d0);
        assert_eq!(v.len(), XENSTORE_PAYLOAD_MAX as u32);
        assert!(!v.is_empty());
    }

    #[test]
    fn header_with_unknown_type_still_parses() {
        let mut h = XsHeader::new_checked([0u8; 16]).unwrap();
        h.set_msg_type(20);
        assert_eq!(h.msg_type(), 20);
        assert_eq!(h.xs_type(), None);
        assert!(h.is_empty());
    }

    #[test]
    fn short_buffer_is_refused() {
        let err = XsHeader::new_checked(&[0u8; 15][..]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "xsd_sockmsg: buffer of 15 bytes is shorter than the 16 the format needs"
        );
    }
}
