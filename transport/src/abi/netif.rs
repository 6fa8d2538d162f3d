//! The network ring protocol (Xen's `public/io/netif.h`): the transmit and
//! receive ring entries, the extra-info descriptor, and the protocol's
//! flags and constants.
//!
//! # Layouts
//!
//! ```text
//! netif_tx_request (12 bytes)            netif_tx_response (4 bytes)
//!  0 gref (u32)  4 offset  6 flags        0 id  2 status (i16)
//!  8 id  10 size
//!
//! netif_rx_request (8 bytes)             netif_rx_response (8 bytes)
//!  0 id  2 pad  4 gref (u32)              0 id  2 offset  4 flags  6 status (i16)
//!
//! netif_extra_info (8 bytes)
//!  0 type  1 flags  2 u (6 bytes):
//!      gso:   2 size (u16)  4 type  5 pad  6 features (u16)
//!      mcast: 2 addr[6]
//!      hash:  2 type  3 algorithm  4 value[4]
//! ```
//!
//! There are two rings per queue. On the tx ring an entry is 12 bytes (the
//! request; the response is smaller) and on the rx ring 8 bytes, so one
//! 4096-byte page holds 256 entries either way. An extra-info descriptor
//! takes the place of a tx request (after one flagged
//! [`NETTXF_EXTRA_INFO`]) or of an rx response (after one flagged
//! [`NETRXF_EXTRA_INFO`]); its own struct is 8 bytes so that it fits both.

use super::{
    get_i16, get_u16, get_u32, get_u8, grant::GrantRef, set_i16, set_u16, set_u32, set_u8,
    view_common,
};

/// tx flag: the protocol checksum field is blank (to be filled by offload).
pub const NETTXF_CSUM_BLANK: u16 = 1 << 0;
/// tx flag: the packet's checksum has been validated.
pub const NETTXF_DATA_VALIDATED: u16 = 1 << 1;
/// tx flag: the packet continues in the next request.
pub const NETTXF_MORE_DATA: u16 = 1 << 2;
/// tx flag: one or more extra-info descriptors follow this request.
pub const NETTXF_EXTRA_INFO: u16 = 1 << 3;

/// rx flag: the packet's checksum has been validated.
pub const NETRXF_DATA_VALIDATED: u16 = 1 << 0;
/// rx flag: the protocol checksum field is blank.
pub const NETRXF_CSUM_BLANK: u16 = 1 << 1;
/// rx flag: the packet continues in the next response.
pub const NETRXF_MORE_DATA: u16 = 1 << 2;
/// rx flag: one or more extra-info descriptors follow this response.
pub const NETRXF_EXTRA_INFO: u16 = 1 << 3;
/// rx flag: the packet has a GSO prefix descriptor (deprecated).
pub const NETRXF_GSO_PREFIX: u16 = 1 << 4;

/// Response status: the packet was dropped.
pub const NETIF_RSP_DROPPED: i16 = -2;
/// Response status: error.
pub const NETIF_RSP_ERROR: i16 = -1;
/// Response status: done.
pub const NETIF_RSP_OKAY: i16 = 0;
/// Response status: no response (the slot of an extra-info request).
pub const NETIF_RSP_NULL: i16 = 1;

/// Extra-info type: none (never valid on the wire).
pub const XEN_NETIF_EXTRA_TYPE_NONE: u8 = 0;
/// Extra-info type: segmentation offload (`u.gso`).
pub const XEN_NETIF_EXTRA_TYPE_GSO: u8 = 1;
/// Extra-info type: add a multicast address (`u.mcast`).
pub const XEN_NETIF_EXTRA_TYPE_MCAST_ADD: u8 = 2;
/// Extra-info type: remove a multicast address (`u.mcast`).
pub const XEN_NETIF_EXTRA_TYPE_MCAST_DEL: u8 = 3;
/// Extra-info type: packet hash (`u.hash`).
pub const XEN_NETIF_EXTRA_TYPE_HASH: u8 = 4;
/// One past the last extra-info type.
pub const XEN_NETIF_EXTRA_TYPE_MAX: u8 = 5;

/// Extra-info flag: another extra-info descriptor follows.
pub const XEN_NETIF_EXTRA_FLAG_MORE: u8 = 1 << 0;

/// GSO type: none.
pub const XEN_NETIF_GSO_TYPE_NONE: u8 = 0;
/// GSO type: TCP over IPv4.
pub const XEN_NETIF_GSO_TYPE_TCPV4: u8 = 1;
/// GSO type: TCP over IPv6.
pub const XEN_NETIF_GSO_TYPE_TCPV6: u8 = 2;

/// Largest packet a frontend may transmit (the `size` field's maximum).
pub const XEN_NETIF_MAX_TX_SIZE: u16 = 0xFFFF;
/// Smallest number of slots per packet a backend must accept (a frontend
/// may use up to this many without asking).
pub const XEN_NETIF_NR_SLOTS_MIN: usize = 18;

/// Size of one tx ring entry (the tx request; the response is smaller).
pub const NETIF_TX_RING_ENTRY_SIZE: usize = 12;
/// Size of one rx ring entry (request and response are both 8 bytes).
pub const NETIF_RX_RING_ENTRY_SIZE: usize = 8;

/// The XenStore keys of the netif handshake (Linux's xen-netback and
/// xen-netfront names).
pub mod keys {
    /// Backend: it can fill rx slots by grant copy.
    pub const FEATURE_RX_COPY: &str = "feature-rx-copy";
    /// Backend: it can fill rx slots by page transfer (flipping).
    pub const FEATURE_RX_FLIP: &str = "feature-rx-flip";
    /// Backend: a separate event channel per ring may be used.
    pub const FEATURE_SPLIT_EVENT_CHANNELS: &str = "feature-split-event-channels";
    /// Frontend: `1` asks for copy mode, `0` (or absent) for transfer.
    pub const REQUEST_RX_COPY: &str = "request-rx-copy";
    /// Frontend: it sets `rsp_event` on the rx ring (the backend may wait
    /// for a notification instead of polling).
    pub const FEATURE_RX_NOTIFY: &str = "feature-rx-notify";
    /// Frontend: grant reference of the tx ring page.
    pub const TX_RING_REF: &str = "tx-ring-ref";
    /// Frontend: grant reference of the rx ring page.
    pub const RX_RING_REF: &str = "rx-ring-ref";
    /// Frontend: the one event channel of both rings.
    pub const EVENT_CHANNEL: &str = "event-channel";
    /// Frontend: the tx ring's event channel (split channels).
    pub const EVENT_CHANNEL_TX: &str = "event-channel-tx";
    /// Frontend: the rx ring's event channel (split channels).
    pub const EVENT_CHANNEL_RX: &str = "event-channel-rx";
}

/// Bytes of an Ethernet header: the smallest frame the split driver
/// carries.
pub const ETH_HLEN: usize = 14;

/// The MTU of a vif device without an `mtu` key.
pub const DEFAULT_MTU: u16 = 1500;
/// The smallest MTU a vif device takes (IPv4's minimum).
pub const MIN_MTU: u16 = 68;
/// The largest MTU with one frame per slot: the frame and its Ethernet
/// header in one page.
pub const MAX_MTU: u16 = (4096 - ETH_HLEN) as u16;

/// A vif device's `mtu` key (`None`: absent, the default), checked
/// against [`MIN_MTU`]..=[`MAX_MTU`]; the error names the bad value.
pub fn parse_mtu(value: Option<&str>) -> Result<u16, String> {
    match value {
        None => Ok(DEFAULT_MTU),
        Some(v) => match v.parse::<u16>() {
            Ok(m) if (MIN_MTU..=MAX_MTU).contains(&m) => Ok(m),
            _ => Err(format!(
                "bad mtu {v:?} ({MIN_MTU} to {MAX_MTU}: a frame must fit in a page)"
            )),
        },
    }
}

/// Checks a TAP interface name from a vif device's `tap` key: 1 to 15
/// bytes of `[A-Za-z0-9._-]` (Linux's IFNAMSIZ less the NUL, and nothing
/// a shell or `ip` would trip on); the error names the bad value.
pub fn check_tap_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!("bad tap name {name:?} (1 to 15 of [A-Za-z0-9._-])"))
    }
}

mod tx_req_field {
    use core::ops::Range;
    pub const GREF: Range<usize> = 0..4;
    pub const OFFSET: Range<usize> = 4..6;
    pub const FLAGS: Range<usize> = 6..8;
    pub const ID: Range<usize> = 8..10;
    pub const SIZE: Range<usize> = 10..12;
}

/// A view of `struct netif_tx_request` (12 bytes): u32 `gref`, u16 `offset`,
/// u16 `flags` (`NETTXF_*`), u16 `id`, u16 `size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetifTxRequest<T: AsRef<[u8]>> {
    buffer: T,
}

view_common!(NetifTxRequest, "netif_tx_request", 12);

impl<T: AsRef<[u8]>> NetifTxRequest<T> {
    /// The granted page holding the data.
    pub fn gref(&self) -> GrantRef {
        get_u32(self.buffer.as_ref(), tx_req_field::GREF)
    }
    /// Offset of the data within the page.
    pub fn offset(&self) -> u16 {
        get_u16(self.buffer.as_ref(), tx_req_field::OFFSET)
    }
    /// `NETTXF_*` flags.
    pub fn flags(&self) -> u16 {
        get_u16(self.buffer.as_ref(), tx_req_field::FLAGS)
    }
    /// Request id, echoed in the response.
    pub fn id(&self) -> u16 {
        get_u16(self.buffer.as_ref(), tx_req_field::ID)
    }
    /// In the first request of a packet, the whole packet's size; in the
    /// following ones, this slot's data size.
    pub fn size(&self) -> u16 {
        get_u16(self.buffer.as_ref(), tx_req_field::SIZE)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> NetifTxRequest<T> {
    /// Sets `gref`.
    pub fn set_gref(&mut self, v: GrantRef) {
        set_u32(self.buffer.as_mut(), tx_req_field::GREF, v)
    }
    /// Sets `offset`.
    pub fn set_offset(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), tx_req_field::OFFSET, v)
    }
    /// Sets `flags`.
    pub fn set_flags(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), tx_req_field::FLAGS, v)
    }
    /// Sets `id`.
    pub fn set_id(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), tx_req_field::ID, v)
    }
    /// Sets `size`.
    pub fn set_size(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), tx_req_field::SIZE, v)
    }
}

mod tx_rsp_field {
    use core::ops::Range;
    pub const ID: Range<usize> = 0..2;
    pub const STATUS: Range<usize> = 2..4;
}

/// A view of `struct netif_tx_response` (4 bytes): u16 `id`, i16 `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetifTxResponse<T: AsRef<[u8]>> {
    buffer: T,
}

view_common!(NetifTxResponse, "netif_tx_response", 4);

impl<T: AsRef<[u8]>> NetifTxResponse<T> {
    /// The request's id.
    pub fn id(&self) -> u16 {
        get_u16(self.buffer.as_ref(), tx_rsp_field::ID)
    }
    /// `NETIF_RSP_*`.
    pub fn status(&self) -> i16 {
        get_i16(self.buffer.as_ref(), tx_rsp_field::STATUS)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> NetifTxResponse<T> {
    /// Sets `id`.
    pub fn set_id(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), tx_rsp_field::ID, v)
    }
    /// Sets `status`.
    pub fn set_status(&mut self, v: i16) {
        set_i16(self.buffer.as_mut(), tx_rsp_field::STATUS, v)
    }
}

mod rx_req_field {
    use core::ops::Range;
    pub const ID: Range<usize> = 0..2;
    pub const PAD: Range<usize> = 2..4;
    pub const GREF: Range<usize> = 4..8;
}

/// A view of `struct netif_rx_request` (8 bytes): u16 `id`, u16 padding,
/// u32 `gref` (a page the backend may fill).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetifRxRequest<T: AsRef<[u8]>> {
    buffer: T,
}

view_common!(NetifRxRequest, "netif_rx_request", 8);

impl<T: AsRef<[u8]>> NetifRxRequest<T> {
    /// Request id, echoed in the response.
    pub fn id(&self) -> u16 {
        get_u16(self.buffer.as_ref(), rx_req_field::ID)
    }
    /// The padding field (0 from a well-behaved frontend; never interpreted).
    pub fn pad(&self) -> u16 {
        get_u16(self.buffer.as_ref(), rx_req_field::PAD)
    }
    /// The granted page to receive into.
    pub fn gref(&self) -> GrantRef {
        get_u32(self.buffer.as_ref(), rx_req_field::GREF)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> NetifRxRequest<T> {
    /// Sets `id`.
    pub fn set_id(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), rx_req_field::ID, v)
    }
    /// Sets the padding field.
    pub fn set_pad(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), rx_req_field::PAD, v)
    }
    /// Sets `gref`.
    pub fn set_gref(&mut self, v: GrantRef) {
        set_u32(self.buffer.as_mut(), rx_req_field::GREF, v)
    }
}

mod rx_rsp_field {
    use core::ops::Range;
    pub const ID: Range<usize> = 0..2;
    pub const OFFSET: Range<usize> = 2..4;
    pub const FLAGS: Range<usize> = 4..6;
    pub const STATUS: Range<usize> = 6..8;
}

/// A view of `struct netif_rx_response` (8 bytes): u16 `id`, u16 `offset`,
/// u16 `flags` (`NETRXF_*`), i16 `status` (bytes received if positive, else
/// `NETIF_RSP_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetifRxResponse<T: AsRef<[u8]>> {
    buffer: T,
}

view_common!(NetifRxResponse, "netif_rx_response", 8);

impl<T: AsRef<[u8]>> NetifRxResponse<T> {
    /// The request's id.
    pub fn id(&self) -> u16 {
        get_u16(self.buffer.as_ref(), rx_rsp_field::ID)
    }
    /// Offset of the data within the page.
    pub fn offset(&self) -> u16 {
        get_u16(self.buffer.as_ref(), rx_rsp_field::OFFSET)
    }
    /// `NETRXF_*` flags.
    pub fn flags(&self) -> u16 {
        get_u16(self.buffer.as_ref(), rx_rsp_field::FLAGS)
    }
    /// Bytes received (> 0), or a `NETIF_RSP_*` code.
    pub fn status(&self) -> i16 {
        get_i16(self.buffer.as_ref(), rx_rsp_field::STATUS)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> NetifRxResponse<T> {
    /// Sets `id`.
    pub fn set_id(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), rx_rsp_field::ID, v)
    }
    /// Sets `offset`.
    pub fn set_offset(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), rx_rsp_field::OFFSET, v)
    }
    /// Sets `flags`.
    pub fn set_flags(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), rx_rsp_field::FLAGS, v)
    }
    /// Sets `status`.
    pub fn set_status(&mut self, v: i16) {
        set_i16(self.buffer.as_mut(), rx_rsp_field::STATUS, v)
    }
}

mod extra_field {
    use core::ops::Range;
    pub const TYPE: usize = 0;
    pub const FLAGS: usize = 1;
    pub const U: Range<usize> = 2..8;
    pub const GSO_SIZE: Range<usize> = 2..4;
    pub const GSO_TYPE: usize = 4;
    pub const GSO_PAD: usize = 5;
    pub const GSO_FEATURES: Range<usize> = 6..8;
    pub const MCAST_ADDR: Range<usize> = 2..8;
    pub const HASH_TYPE: usize = 2;
    pub const HASH_ALGORITHM: usize = 3;
    pub const HASH_VALUE: Range<usize> = 4..8;
}

/// A view of `struct netif_extra_info` (8 bytes): u8 `type`
/// (`XEN_NETIF_EXTRA_TYPE_*`), u8 `flags` (`XEN_NETIF_EXTRA_FLAG_*`), and a
/// 6-byte union `u` read through the accessors of the member `type` selects
/// (`gso_*`, `mcast_addr`, `hash_*`). In a ring it sits in a tx request slot
/// (12 bytes) or an rx response slot (8 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetifExtraInfo<T: AsRef<[u8]>> {
    buffer: T,
}

view_common!(NetifExtraInfo, "netif_extra_info", 8);

impl<T: AsRef<[u8]>> NetifExtraInfo<T> {
    /// `XEN_NETIF_EXTRA_TYPE_*`.
    pub fn extra_type(&self) -> u8 {
        get_u8(self.buffer.as_ref(), extra_field::TYPE)
    }
    /// `XEN_NETIF_EXTRA_FLAG_*`.
    pub fn flags(&self) -> u8 {
        get_u8(self.buffer.as_ref(), extra_field::FLAGS)
    }
    /// The raw 6 bytes of the union `u`.
    pub fn union_bytes(&self) -> &[u8] {
        &self.buffer.as_ref()[extra_field::U]
    }
    /// `u.gso.size`: the maximum segment size.
    pub fn gso_size(&self) -> u16 {
        get_u16(self.buffer.as_ref(), extra_field::GSO_SIZE)
    }
    /// `u.gso.type`: `XEN_NETIF_GSO_TYPE_*`.
    pub fn gso_type(&self) -> u8 {
        get_u8(self.buffer.as_ref(), extra_field::GSO_TYPE)
    }
    /// `u.gso.pad`.
    pub fn gso_pad(&self) -> u8 {
        get_u8(self.buffer.as_ref(), extra_field::GSO_PAD)
    }
    /// `u.gso.features`.
    pub fn gso_features(&self) -> u16 {
        get_u16(self.buffer.as_ref(), extra_field::GSO_FEATURES)
    }
    /// `u.mcast.addr`: an Ethernet multicast address.
    pub fn mcast_addr(&self) -> [u8; 6] {
        let mut a = [0u8; 6];
        a.copy_from_slice(&self.buffer.as_ref()[extra_field::MCAST_ADDR]);
        a
    }
    /// `u.hash.type`.
    pub fn hash_type(&self) -> u8 {
        get_u8(self.buffer.as_ref(), extra_field::HASH_TYPE)
    }
    /// `u.hash.algorithm`.
    pub fn hash_algorithm(&self) -> u8 {
        get_u8(self.buffer.as_ref(), extra_field::HASH_ALGORITHM)
    }
    /// `u.hash.value`: the 4 hash bytes as stored.
    pub fn hash_value(&self) -> [u8; 4] {
        let mut v = [0u8; 4];
        v.copy_from_slice(&self.buffer.as_ref()[extra_field::HASH_VALUE]);
        v
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> NetifExtraInfo<T> {
    /// Sets `type`.
    pub fn set_extra_type(&mut self, v: u8) {
        set_u8(self.buffer.as_mut(), extra_field::TYPE, v)
    }
    /// Sets `flags`.
    pub fn set_flags(&mut self, v: u8) {
        set_u8(self.buffer.as_mut(), extra_field::FLAGS, v)
    }
    /// Sets `u.gso.size`.
    pub fn set_gso_size(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), extra_field::GSO_SIZE, v)
    }
    /// Sets `u.gso.type`.
    pub fn set_gso_type(&mut self, v: u8) {
        set_u8(self.buffer.as_mut(), extra_field::GSO_TYPE, v)
    }
    /// Sets `u.gso.pad`.
    pub fn set_gso_pad(&mut self, v: u8) {
        set_u8(self.buffer.as_mut(), extra_field::GSO_PAD, v)
    }
    /// Sets `u.gso.features`.
    pub fn set_gso_features(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), extra_field::GSO_FEATURES, v)
    }
    /// Sets `u.mcast.addr`.
    pub fn set_mcast_addr(&mut self, v: [u8; 6]) {
        self.buffer.as_mut()[extra_field::MCAST_ADDR].copy_from_slice(&v)
    }
    /// Sets `u.hash.type`.
    pub fn set_hash_type(&mut self, v: u8) {
        set_u8(self.buffer.as_mut(), extra_field::HASH_TYPE, v)
    }
    /// Sets `u.hash.algorithm`.
    pub fn set_hash_algorithm(&mut self, v: u8) {
        set_u8(self.buffer.as_mut(), extra_field::HASH_ALGORITHM, v)
    }
    /// Sets `u.hash.value`.
    pub fn set_hash_value(&mut self, v: [u8; 4]) {
        self.buffer.as_mut()[extra_field::HASH_VALUE].copy_from_slice(&v)
    }
}

/// `#[repr(C)]` mirrors of Xen's declarations, checked against the field
/// ranges at compile time.
#[allow(dead_code)]
mod c {
    use super::{
        extra_field as x, rx_req_field as rq, rx_rsp_field as rs, tx_req_field as tq,
        tx_rsp_field as ts,
    };
    use crate::abi::ring::SRING_HEADER_SIZE;
    use core::mem::{offset_of, size_of};

    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct netif_tx_request {
        pub gref: u32,
        pub offset: u16,
        pub flags: u16,
        pub id: u16,
        pub size: u16,
    }
    const _: () = assert!(size_of::<netif_tx_request>() == 12);
    const _: () = assert!(offset_of!(netif_tx_request, gref) == tq::GREF.start);
    const _: () = assert!(offset_of!(netif_tx_request, offset) == tq::OFFSET.start);
    const _: () = assert!(offset_of!(netif_tx_request, flags) == tq::FLAGS.start);
    const _: () = assert!(offset_of!(netif_tx_request, id) == tq::ID.start);
    const _: () = assert!(offset_of!(netif_tx_request, size) == tq::SIZE.start);

    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct netif_tx_response {
        pub id: u16,
        pub status: i16,
    }
    const _: () = assert!(size_of::<netif_tx_response>() == 4);
    const _: () = assert!(offset_of!(netif_tx_response, id) == ts::ID.start);
    const _: () = assert!(offset_of!(netif_tx_response, status) == ts::STATUS.start);

    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct netif_rx_request {
        pub id: u16,
        pub pad: u16,
        pub gref: u32,
    }
    const _: () = assert!(size_of::<netif_rx_request>() == 8);
    const _: () = assert!(offset_of!(netif_rx_request, id) == rq::ID.start);
    const _: () = assert!(offset_of!(netif_rx_request, pad) == rq::PAD.start);
    const _: () = assert!(offset_of!(netif_rx_request, gref) == rq::GREF.start);

    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct netif_rx_response {
        pub id: u16,
        pub offset: u16,
        pub flags: u16,
        pub status: i16,
    }
    const _: () = assert!(size_of::<netif_rx_response>() == 8);
    const _: () = assert!(offset_of!(netif_rx_response, id) == rs::ID.start);
    const _: () = assert!(offset_of!(netif_rx_response, offset) == rs::OFFSET.start);
    const _: () = assert!(offset_of!(netif_rx_response, flags) == rs::FLAGS.start);
    const _: () = assert!(offset_of!(netif_rx_response, status) == rs::STATUS.start);

    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct netif_extra_info_gso {
        pub size: u16,
        pub r#type: u8,
        pub pad: u8,
        pub features: u16,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct netif_extra_info_mcast {
        pub addr: [u8; 6],
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct netif_extra_info_hash {
        pub r#type: u8,
        pub algorithm: u8,
        pub value: [u8; 4],
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub union netif_extra_info_u {
        pub gso: netif_extra_info_gso,
        pub mcast: netif_extra_info_mcast,
        pub hash: netif_extra_info_hash,
        pub pad: [u16; 3],
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct netif_extra_info {
        pub r#type: u8,
        pub flags: u8,
        pub u: netif_extra_info_u,
    }
    const _: () = assert!(size_of::<netif_extra_info>() == 8);
    const _: () = assert!(size_of::<netif_extra_info_u>() == x::U.end - x::U.start);
    const _: () = assert!(offset_of!(netif_extra_info, r#type) == x::TYPE);
    const _: () = assert!(offset_of!(netif_extra_info, flags) == x::FLAGS);
    const _: () = assert!(offset_of!(netif_extra_info, u) == x::U.start);
    const U: usize = offset_of!(netif_extra_info, u);
    const _: () = assert!(U + offset_of!(netif_extra_info_gso, size) == x::GSO_SIZE.start);
    const _: () = assert!(U + offset_of!(netif_extra_info_gso, r#type) == x::GSO_TYPE);
    const _: () = assert!(U + offset_of!(netif_extra_info_gso, pad) == x::GSO_PAD);
    const _: () = assert!(U + offset_of!(netif_extra_info_gso, features) == x::GSO_FEATURES.start);
    const _: () = assert!(U + offset_of!(netif_extra_info_mcast, addr) == x::MCAST_ADDR.start);
    const _: () = assert!(U + offset_of!(netif_extra_info_hash, r#type) == x::HASH_TYPE);
    const _: () = assert!(U + offset_of!(netif_extra_info_hash, algorithm) == x::HASH_ALGORITHM);
    const _: () = assert!(U + offset_of!(netif_extra_info_hash, value) == x::HASH_VALUE.start);
    // It must fit in both a tx request and an rx response.
    const _: () = assert!(size_of::<netif_extra_info>() <= size_of::<netif_tx_request>());
    const _: () = assert!(size_of::<netif_extra_info>() <= size_of::<netif_rx_response>());

    // DEFINE_RING_TYPES(netif_tx, ...) and (netif_rx, ...).
    #[repr(C)]
    pub union netif_tx_sring_entry {
        pub req: netif_tx_request,
        pub rsp: netif_tx_response,
    }
    #[repr(C)]
    pub union netif_rx_sring_entry {
        pub req: netif_rx_request,
        pub rsp: netif_rx_response,
    }
    #[repr(C)]
    pub struct netif_tx_sring {
        pub header: [u32; 4],
        pub pvt: [u8; 4],
        pub __pad: [u8; 44],
        pub ring: [netif_tx_sring_entry; 0],
    }
    const _: () = assert!(size_of::<netif_tx_sring_entry>() == super::NETIF_TX_RING_ENTRY_SIZE);
    const _: () = assert!(size_of::<netif_rx_sring_entry>() == super::NETIF_RX_RING_ENTRY_SIZE);
    const _: () = assert!(offset_of!(netif_tx_sring, ring) == SRING_HEADER_SIZE);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::ring::ring_entries;

    #[test]
    fn constants_match_netif_h() {
        assert_eq!(
            [
                NETTXF_CSUM_BLANK,
                NETTXF_DATA_VALIDATED,
                NETTXF_MORE_DATA,
                NETTXF_EXTRA_INFO
            ],
            [1, 2, 4, 8]
        );
        assert_eq!(
            [
                NETRXF_DATA_VALIDATED,
                NETRXF_CSUM_BLANK,
                NETRXF_MORE_DATA,
                NETRXF_EXTRA_INFO,
                NETRXF_GSO_PREFIX
            ],
            [1, 2, 4, 8, 16]
        );
        assert_eq!(
            [
                NETIF_RSP_DROPPED,
                NETIF_RSP_ERROR,
                NETIF_RSP_OKAY,
                NETIF_RSP_NULL
            ],
            [-2, -1, 0, 1]
        );
        assert_eq!(
            [
                XEN_NETIF_EXTRA_TYPE_NONE,
                XEN_NETIF_EXTRA_TYPE_GSO,
                XEN_NETIF_EXTRA_TYPE_MCAST_ADD,
                XEN_NETIF_EXTRA_TYPE_MCAST_DEL,
                XEN_NETIF_EXTRA_TYPE_HASH,
                XEN_NETIF_EXTRA_TYPE_MAX
            ],
            [0, 1, 2, 3, 4, 5]
        );
        assert_eq!(XEN_NETIF_EXTRA_FLAG_MORE, 1);
        assert_eq!(
            [
                XEN_NETIF_GSO_TYPE_NONE,
                XEN_NETIF_GSO_TYPE_TCPV4,
                XEN_NETIF_GSO_TYPE_TCPV6
            ],
            [0, 1, 2]
        );
        assert_eq!(XEN_NETIF_MAX_TX_SIZE, 0xffff);
        assert_eq!(XEN_NETIF_NR_SLOTS_MIN, 18);
    }

    #[test]
    fn ring_sizes() {
        assert_eq!(ring_entries(4096, 12), 256);
        assert_eq!(ring_entries(4096, 8), 256);
        assert_eq!(ring_entries(4096, NETIF_TX_RING_ENTRY_SIZE), 256);
        assert_eq!(ring_entries(4096, NETIF_RX_RING_ENTRY_SIZE), 256);
    }

    #[test]
    fn tx_request_golden_bytes() {
        let mut r = NetifTxRequest::new_checked([0u8; 12]).unwrap();
        r.set_gref(0x0102_0304);
        r.set_offset(0x0abc);
        r.set_flags(NETTXF_CSUM_BLANK | NETTXF_MORE_DATA | NETTXF_EXTRA_INFO);
        r.set_id(0x00ff);
        r.set_size(0x05dc);
        let golden: [u8; 12] = [
            0x04, 0x03, 0x02, 0x01, 0xbc, 0x0a, 0x0d, 0x00, 0xff, 0x00, 0xdc, 0x05,
        ];
        assert_eq!(r.as_bytes(), &golden);
        let v = NetifTxRequest::new_checked(&golden[..]).unwrap();
        assert_eq!(v.gref(), 0x0102_0304);
        assert_eq!(v.offset(), 0x0abc);
        assert_eq!(v.flags(), 0x0d);
        assert_eq!(v.id(), 0xff);
        assert_eq!(v.size(), 1500);
    }

    #[test]
    fn tx_response_golden_bytes() {
        let mut r = NetifTxResponse::new_checked([0u8; 4]).unwrap();
        r.set_id(0x1234);
        r.set_status(NETIF_RSP_DROPPED);
        let golden = [0x34, 0x12, 0xfe, 0xff];
        assert_eq!(r.as_bytes(), &golden);
        let v = NetifTxResponse::new_checked(&golden[..]).unwrap();
        assert_eq!((v.id(), v.status()), (0x1234, -2));
    }

    #[test]
    fn rx_request_golden_bytes() {
        let mut r = NetifRxRequest::new_checked([0u8; 8]).unwrap();
        r.set_id(7);
        r.set_pad(0);
        r.set_gref(0xdead_beef);
        let golden = [0x07, 0x00, 0, 0, 0xef, 0xbe, 0xad, 0xde];
        assert_eq!(r.as_bytes(), &golden);
        let v = NetifRxRequest::new_checked(&golden[..]).unwrap();
        assert_eq!((v.id(), v.pad(), v.gref()), (7, 0, 0xdead_beef));
    }

    #[test]
    fn rx_response_golden_bytes() {
        let mut r = NetifRxResponse::new_checked([0u8; 8]).unwrap();
        r.set_id(0x0102);
        r.set_offset(0x0040);
        r.set_flags(NETRXF_DATA_VALIDATED | NETRXF_GSO_PREFIX);
        r.set_status(1514);
        let golden = [0x02, 0x01, 0x40, 0x00, 0x11, 0x00, 0xea, 0x05];
        assert_eq!(r.as_bytes(), &golden);
        let v = NetifRxResponse::new_checked(&golden[..]).unwrap();
        assert_eq!(v.id(), 0x0102);
        assert_eq!(v.offset(), 0x40);
        assert_eq!(v.flags(), NETRXF_DATA_VALIDATED | NETRXF_GSO_PREFIX);
        assert_eq!(v.status(), 1514);
        let mut e = NetifRxResponse::new_checked([0u8; 8]).unwrap();
        e.set_status(NETIF_RSP_ERROR);
        assert_eq!(&e.as_bytes()[6..], &[0xff, 0xff]);
        assert_eq!(e.status(), -1);
    }

    #[test]
    fn extra_info_gso_golden_bytes() {
        let mut x = NetifExtraInfo::new_checked([0u8; 8]).unwrap();
        x.set_extra_type(XEN_NETIF_EXTRA_TYPE_GSO);
        x.set_flags(XEN_NETIF_EXTRA_FLAG_MORE);
        x.set_gso_size(1448);
        x.set_gso_type(XEN_NETIF_GSO_TYPE_TCPV6);
        x.set_gso_pad(0);
        x.set_gso_features(0x0102);
        let golden = [0x01, 0x01, 0xa8, 0x05, 0x02, 0x00, 0x02, 0x01];
        assert_eq!(x.as_bytes(), &golden);
        let v = NetifExtraInfo::new_checked(&golden[..]).unwrap();
        assert_eq!(v.extra_type(), XEN_NETIF_EXTRA_TYPE_GSO);
        assert_eq!(v.flags(), XEN_NETIF_EXTRA_FLAG_MORE);
        assert_eq!(v.gso_size(), 1448);
        assert_eq!(v.gso_type(), XEN_NETIF_GSO_TYPE_TCPV6);
        assert_eq!(v.gso_pad(), 0);
        assert_eq!(v.gso_features(), 0x0102);
        assert_eq!(v.union_bytes(), &golden[2..]);
        // An extra-info descriptor in a 12-byte tx slot uses its first 8.
        let mut slot = [0u8; 12];
        slot[..8].copy_from_slice(&golden);
        assert_eq!(
            NetifExtraInfo::new_checked(&slot[..]).unwrap().gso_size(),
            1448
        );
    }

    #[test]
    fn extra_info_mcast_and_hash_golden_bytes() {
        let mut x = NetifExtraInfo::new_checked([0u8; 8]).unwrap();
        x.set_extra_type(XEN_NETIF_EXTRA_TYPE_MCAST_ADD);
        x.set_mcast_addr([0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb]);
        let golden = [0x02, 0x00, 0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb];
        assert_eq!(x.as_bytes(), &golden);
        assert_eq!(x.mcast_addr(), [0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb]);

        let mut h = NetifExtraInfo::new_checked([0u8; 8]).unwrap();
        h.set_extra_type(XEN_NETIF_EXTRA_TYPE_HASH);
        h.set_hash_type(1);
        h.set_hash_algorithm(1);
        h.set_hash_value([0xaa, 0xbb, 0xcc, 0xdd]);
        let golden = [0x04, 0x00, 0x01, 0x01, 0xaa, 0xbb, 0xcc, 0xdd];
        assert_eq!(h.as_bytes(), &golden);
        let v = NetifExtraInfo::new_checked(&golden[..]).unwrap();
        assert_eq!(
            (v.hash_type(), v.hash_algorithm(), v.hash_value()),
            (1, 1, [0xaa, 0xbb, 0xcc, 0xdd])
        );
    }

    #[test]
    fn short_buffers_are_refused() {
        assert_eq!(
            NetifTxRequest::new_checked(&[0u8; 11][..])
                .unwrap_err()
                .to_string(),
            "netif_tx_request: buffer of 11 bytes is shorter than the 12 the format needs"
        );
        assert!(NetifTxResponse::new_checked(&[0u8; 3][..]).is_err());
        assert!(NetifRxRequest::new_checked(&[0u8; 7][..]).is_err());
        assert!(NetifRxResponse::new_checked(&[0u8; 7][..]).is_err());
        assert!(NetifExtraInfo::new_checked(&[0u8; 7][..]).is_err());
    }
}
