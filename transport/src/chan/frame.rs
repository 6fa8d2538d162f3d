//! The chan wire format: a sans-IO codec for the frames the multiplexer
//! exchanges over one byte stream.
//!
//! # Frame layout (all integers little-endian)
//!
//! ```text
//!  0          4      5       6          8          12
//!  +----------+------+-------+----------+----------+----------------------
//!  | channel  | kind | flags | reserved |  length  | payload (length bytes)
//!  |  (u32)   | (u8) | (u8)  | (u16, 0) |  (u32)   |
//!  +----------+------+-------+----------+----------+----------------------
//!
//!  HELLO payload (channel 0, 12 bytes in version 1):
//!  0           4          6      7          8          12
//!  +-----------+----------+------+----------+----------+
//!  | magic     | version  | role | reserved |  window  |
//!  | "XCHN"    |  (u16)   | (u8) |  (u8, 0) |  (u32)   |
//!  +-----------+----------+------+----------+----------+
//! ```
//!
//! | kind | value | channel | payload |
//! |---|---|---|---|
//! | [`Kind::Hello`] | 1 | 0 | magic, version, role, window (above) |
//! | [`Kind::Open`] | 2 | new id | none |
//! | [`Kind::OpenOk`] | 3 | id | none |
//! | [`Kind::Data`] | 4 | id | 1 to [`MAX_PAYLOAD`] bytes of the stream |
//! | [`Kind::Credit`] | 5 | id | u32 increment of the sender's window, not 0 |
//! | [`Kind::Eof`] | 6 | id | none: no more data this way |
//! | [`Kind::Reset`] | 7 | id, or 0 for the whole connection | UTF-8 reason, at most [`MAX_REASON`] bytes |
//!
//! # Invariants
//!
//! * A header is checked as soon as its 12 bytes are there, before the
//!   payload is waited for: an unknown kind, nonzero flags or reserved
//!   bits, a kind on the wrong channel (HELLO off channel 0, a channel
//!   frame on channel 0) or a length outside the kind's range is an error
//!   at once, so an oversized length never makes the decoder buffer it.
//! * The first 6 bytes of a HELLO payload (magic and version) are the same
//!   in every version, so a version mismatch is reported as such
//!   ([`FrameError::Version`]) whatever else a newer HELLO carries.
//! * Decoding never panics and never reads past the buffer; a frame
//!   [`Frame::encode`] accepts is exactly a frame [`decode`] accepts.
//! * After an error the byte stream is out of step: the caller stops
//!   decoding it (the multiplexer ends the connection).

use std::fmt;

use bytes::{Buf, Bytes, BytesMut};

use crate::abi::{get_u16, get_u32, get_u8, set_u16, set_u32, set_u8};

/// Size of a frame header in bytes.
pub const HEADER_SIZE: usize = 12;
/// Largest payload of a DATA frame (64 KiB).
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// Largest RESET reason in bytes; [`Frame::reset`] truncates longer ones.
pub const MAX_REASON: usize = 1024;
/// Size of a version 1 HELLO payload.
pub const HELLO_SIZE: usize = field::HELLO_END;
/// Largest HELLO payload any version may send (so that a newer peer's
/// HELLO is still read far enough to report the version).
pub const MAX_HELLO: usize = 256;
/// The protocol version this code speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// The first four bytes of every HELLO payload.
pub const MAGIC: [u8; 4] = *b"XCHN";
/// The channel id of connection-wide frames (HELLO, a RESET of the whole
/// connection). No channel has this id.
pub const CONNECTION: u32 = 0;

mod field {
    use core::ops::Range;
    pub const CHANNEL: Range<usize> = 0..4;
    pub const KIND: usize = 4;
    pub const FLAGS: usize = 5;
    pub const RESERVED: Range<usize> = 6..8;
    pub const LENGTH: Range<usize> = 8..12;
    pub const HEADER_END: usize = 12;

    pub const MAGIC: Range<usize> = 0..4;
    pub const VERSION: Range<usize> = 4..6;
    pub const ROLE: usize = 6;
    pub const HELLO_RESERVED: usize = 7;
    pub const WINDOW: Range<usize> = 8..12;
    pub const HELLO_END: usize = 12;
}

const _: () = assert!(field::HEADER_END == HEADER_SIZE);
const _: () = assert!(field::LENGTH.end == HEADER_SIZE);
const _: () = assert!(
    field::VERSION.end <= 8,
    "magic+version stay in the first 8 bytes"
);

/// What a frame says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// First frame each way: magic, version, role, initial window.
    Hello = 1,
    /// Opens a channel with a new id.
    Open = 2,
    /// Accepts a channel the peer opened.
    OpenOk = 3,
    /// Bytes of a channel's stream.
    Data = 4,
    /// The receiver has consumed bytes: the sender may send this many more.
    Credit = 5,
    /// Half close: the sender sends no more data on this channel.
    Eof = 6,
    /// Abort a channel (or, on channel 0, the connection), with a reason.
    Reset = 7,
}

impl Kind {
    /// The kind with wire value `v`, if any.
    pub fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Hello,
            2 => Kind::Open,
            3 => Kind::OpenOk,
            4 => Kind::Data,
            5 => Kind::Credit,
            6 => Kind::Eof,
            7 => Kind::Reset,
            _ => return None,
        })
    }

    /// Smallest and largest payload length this kind allows.
    pub fn payload_range(self) -> (usize, usize) {
        match self {
            Kind::Hello => (field::VERSION.end, MAX_HELLO),
            Kind::Open | Kind::OpenOk | Kind::Eof => (0, 0),
            Kind::Data => (1, MAX_PAYLOAD),
            Kind::Credit => (4, 4),
            Kind::Reset => (0, MAX_REASON),
        }
    }

    /// Whether this kind may appear on channel id `channel`.
    fn allowed_on(self, channel: u32) -> bool {
        match self {
            Kind::Hello => channel == CONNECTION,
            Kind::Reset => true,
            _ => channel != CONNECTION,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Hello => "HELLO",
            Kind::Open => "OPEN",
            Kind::OpenOk => "OPEN_OK",
            Kind::Data => "DATA",
            Kind::Credit => "CREDIT",
            Kind::Eof => "EOF",
            Kind::Reset => "RESET",
        })
    }
}

/// Which end of the connection this is. Each end allocates channel ids of
/// its own parity, so ids opened by both ends at once never collide; the
/// two ends must have different roles (checked in the HELLO).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Opens odd channel ids (1, 3, 5, ...). Wire value 1.
    Client,
    /// Opens even channel ids (2, 4, 6, ...). Wire value 2.
    Server,
}

impl Role {
    fn to_u8(self) -> u8 {
        match self {
            Role::Client => 1,
            Role::Server => 2,
        }
    }

    fn from_u8(v: u8) -> Option<Role> {
        match v {
            1 => Some(Role::Client),
            2 => Some(Role::Server),
            _ => None,
        }
    }

    /// The first channel id this role opens.
    pub fn first_id(self) -> u32 {
        self.to_u8() as u32
    }

    /// Whether `id` has this role's parity (was, or will be, opened by it).
    pub fn owns(self, id: u32) -> bool {
        id != CONNECTION && (id % 2 == 1) == (self == Role::Client)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Client => "client",
            Role::Server => "server",
        })
    }
}

/// Why bytes are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The input ended inside a frame.
    #[error("chan frame: input ends inside a frame ({got} of {need} bytes)")]
    Truncated {
        /// Bytes needed for the frame.
        need: usize,
        /// Bytes there were.
        got: usize,
    },
    /// The kind byte names no frame kind.
    #[error("chan frame: unknown kind {kind:#04x} on channel {channel}")]
    UnknownKind {
        /// The channel id field.
        channel: u32,
        /// The kind byte.
        kind: u8,
    },
    /// Flags or reserved bits that version 1 leaves zero are set.
    #[error("chan frame: {kind} on channel {channel} has flags {flags:#04x} and reserved bits {reserved:#06x}, which must be 0")]
    Reserved {
        /// The channel id field.
        channel: u32,
        /// The frame kind.
        kind: Kind,
        /// The flags byte.
        flags: u8,
        /// The reserved field.
        reserved: u16,
    },
    /// A connection frame on a channel, or a channel frame on channel 0.
    #[error("chan frame: {kind} is not allowed on channel {channel}")]
    WrongChannel {
        /// The channel id field.
        channel: u32,
        /// The frame kind.
        kind: Kind,
    },
    /// The length field is outside the kind's range.
    #[error(
        "chan frame: {kind} on channel {channel} has a {len}-byte payload, allowed {min} to {max}"
    )]
    BadLength {
        /// The channel id field.
        channel: u32,
        /// The frame kind.
        kind: Kind,
        /// The length field.
        len: u32,
        /// Smallest allowed.
        min: usize,
        /// Largest allowed.
        max: usize,
    },
    /// A HELLO without the magic: the peer does not speak this protocol.
    #[error("chan frame: HELLO magic {found:02x?} is not \"XCHN\": the peer does not speak the chan protocol")]
    BadMagic {
        /// The four bytes found.
        found: [u8; 4],
    },
    /// The peer speaks another protocol version.
    #[error(
        "chan protocol version mismatch: this end speaks version {ours}, the peer version {theirs}"
    )]
    Version {
        /// [`PROTOCOL_VERSION`].
        ours: u16,
        /// The peer's version.
        theirs: u16,
    },
    /// A HELLO field holds a value version 1 does not allow.
    #[error("chan frame: HELLO {what} {value} is invalid")]
    BadHello {
        /// The field.
        what: &'static str,
        /// The value found.
        value: u64,
    },
    /// A CREDIT of 0.
    #[error("chan frame: CREDIT of 0 bytes on channel {channel}")]
    ZeroCredit {
        /// The channel id.
        channel: u32,
    },
    /// A RESET reason that is not UTF-8.
    #[error("chan frame: RESET reason on channel {channel} is not UTF-8")]
    BadReason {
        /// The channel id.
        channel: u32,
    },
}

/// A view of a 12-byte frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> FrameHeader<T> {
    /// Size of the header in bytes.
    pub const SIZE: usize = HEADER_SIZE;

    /// Wraps `buffer` after checking it holds at least [`Self::SIZE`]
    /// bytes; accessors then never panic.
    pub fn new_checked(buffer: T) -> Result<Self, FrameError> {
        let got = buffer.as_ref().len();
        if got < HEADER_SIZE {
            return Err(FrameError::Truncated {
                need: HEADER_SIZE,
                got,
            });
        }
        Ok(FrameHeader { buffer })
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The header's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buffer.as_ref()[..HEADER_SIZE]
    }

    /// The channel id field.
    pub fn channel(&self) -> u32 {
        get_u32(self.buffer.as_ref(), field::CHANNEL)
    }

    /// The raw kind byte.
    pub fn kind_byte(&self) -> u8 {
        get_u8(self.buffer.as_ref(), field::KIND)
    }

    /// The flags byte (0 in version 1).
    pub fn flags(&self) -> u8 {
        get_u8(self.buffer.as_ref(), field::FLAGS)
    }

    /// The reserved field (0 in version 1).
    pub fn reserved(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::RESERVED)
    }

    /// The payload length field.
    pub fn length(&self) -> u32 {
        get_u32(self.buffer.as_ref(), field::LENGTH)
    }

    /// Checks the header on its own (kind, flags, channel rule, length
    /// range) and returns the kind and the payload length.
    pub fn check(&self) -> Result<(Kind, usize), FrameError> {
        let channel = self.channel();
        let kind = Kind::from_u8(self.kind_byte()).ok_or(FrameError::UnknownKind {
            channel,
            kind: self.kind_byte(),
        })?;
        if self.flags() != 0 || self.reserved() != 0 {
            return Err(FrameError::Reserved {
                channel,
                kind,
                flags: self.flags(),
                reserved: self.reserved(),
            });
        }
        if !kind.allowed_on(channel) {
            return Err(FrameError::WrongChannel { channel, kind });
        }
        let len = self.length();
        let (min, max) = kind.payload_range();
        match usize::try_from(len) {
            Ok(l) if (min..=max).contains(&l) => Ok((kind, l)),
            _ => Err(FrameError::BadLength {
                channel,
                kind,
                len,
                min,
                max,
            }),
        }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> FrameHeader<T> {
    /// Sets the channel id field.
    pub fn set_channel(&mut self, v: u32) {
        set_u32(self.buffer.as_mut(), field::CHANNEL, v)
    }
    /// Sets the kind byte.
    pub fn set_kind(&mut self, v: Kind) {
        set_u8(self.buffer.as_mut(), field::KIND, v as u8)
    }
    /// Sets the flags byte.
    pub fn set_flags(&mut self, v: u8) {
        set_u8(self.buffer.as_mut(), field::FLAGS, v)
    }
    /// Sets the reserved field.
    pub fn set_reserved(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), field::RESERVED, v)
    }
    /// Sets the payload length field.
    pub fn set_length(&mut self, v: u32) {
        set_u32(self.buffer.as_mut(), field::LENGTH, v)
    }
}

/// The HELLO each end sends first: its role and the initial window it
/// grants the peer on every channel (the version is [`PROTOCOL_VERSION`];
/// any other is refused by the decoder).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// The sender's role.
    pub role: Role,
    /// Bytes the receiver may send on each new channel before the first
    /// CREDIT (at least 1).
    pub window: u32,
}

/// One decoded (or to be encoded) frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// The first frame each way (channel 0).
    Hello(Hello),
    /// Open the channel with this id.
    Open(u32),
    /// The channel with this id is accepted.
    OpenOk(u32),
    /// Stream bytes on a channel.
    Data {
        /// The channel id.
        channel: u32,
        /// 1 to [`MAX_PAYLOAD`] bytes.
        payload: Bytes,
    },
    /// The sender of this frame consumed `increment` more bytes of the channel.
    Credit {
        /// The channel id.
        channel: u32,
        /// Bytes added to the receiver's send window (not 0).
        increment: u32,
    },
    /// No more data on this channel from the sender of this frame.
    Eof(u32),
    /// Abort the channel (channel 0: the connection).
    Reset {
        /// The channel id, or [`CONNECTION`].
        channel: u32,
        /// Why, at most [`MAX_REASON`] bytes.
        reason: String,
    },
}

impl Frame {
    /// A RESET with `reason` cut to at most [`MAX_REASON`] bytes (at a
    /// character boundary).
    pub fn reset(channel: u32, reason: &str) -> Frame {
        let mut end = reason.len().min(MAX_REASON);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        Frame::Reset {
            channel,
            reason: reason[..end].to_owned(),
        }
    }

    /// The frame's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Frame::Hello(_) => Kind::Hello,
            Frame::Open(_) => Kind::Open,
            Frame::OpenOk(_) => Kind::OpenOk,
            Frame::Data { .. } => Kind::Data,
            Frame::Credit { .. } => Kind::Credit,
            Frame::Eof(_) => Kind::Eof,
            Frame::Reset { .. } => Kind::Reset,
        }
    }

    /// The channel id the frame is about ([`CONNECTION`] for HELLO).
    pub fn channel(&self) -> u32 {
        match self {
            Frame::Hello(_) => CONNECTION,
            Frame::Open(c) | Frame::OpenOk(c) | Frame::Eof(c) => *c,
            Frame::Data { channel, .. }
            | Frame::Credit { channel, .. }
            | Frame::Reset { channel, .. } => *channel,
        }
    }

    /// Header plus payload size.
    pub fn encoded_len(&self) -> usize {
        HEADER_SIZE
            + match self {
                Frame::Hello(_) => HELLO_SIZE,
                Frame::Open(_) | Frame::OpenOk(_) | Frame::Eof(_) => 0,
                Frame::Data { payload, .. } => payload.len(),
                Frame::Credit { .. } => 4,
                Frame::Reset { reason, .. } => reason.len(),
            }
    }

    /// Appends the frame to `dst`. Refuses (appending nothing) exactly
    /// what [`decode`] would refuse: an empty or oversized DATA, a CREDIT
    /// of 0, a reason over [`MAX_REASON`], a window of 0, a channel frame
    /// on channel 0.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), FrameError> {
        let (kind, channel, len) = (
            self.kind(),
            self.channel(),
            self.encoded_len() - HEADER_SIZE,
        );
        let len32 = u32::try_from(len).unwrap_or(u32::MAX);
        let (min, max) = kind.payload_range();
        if !(min..=max).contains(&len) {
            return Err(FrameError::BadLength {
                channel,
                kind,
                len: len32,
                min,
                max,
            });
        }
        if !kind.allowed_on(channel) {
            return Err(FrameError::WrongChannel { channel, kind });
        }
        match self {
            Frame::Credit { increment: 0, .. } => return Err(FrameError::ZeroCredit { channel }),
            Frame::Hello(Hello { window: 0, .. }) => {
                return Err(FrameError::BadHello {
                    what: "window",
                    value: 0,
                })
            }
            _ => {}
        }
        put_header(dst, channel, kind, len32);
        match self {
            Frame::Hello(h) => {
                let mut p = [0u8; HELLO_SIZE];
                p[field::MAGIC].copy_from_slice(&MAGIC);
                set_u16(&mut p, field::VERSION, PROTOCOL_VERSION);
                set_u8(&mut p, field::ROLE, h.role.to_u8());
                set_u32(&mut p, field::WINDOW, h.window);
                dst.extend_from_slice(&p);
            }
            Frame::Open(_) | Frame::OpenOk(_) | Frame::Eof(_) => {}
            Frame::Data { payload, .. } => dst.extend_from_slice(payload),
            Frame::Credit { increment, .. } => dst.extend_from_slice(&increment.to_le_bytes()),
            Frame::Reset { reason, .. } => dst.extend_from_slice(reason.as_bytes()),
        }
        Ok(())
    }
}

/// Appends a header; the caller appends exactly `len` payload bytes.
pub(crate) fn put_header(dst: &mut BytesMut, channel: u32, kind: Kind, len: u32) {
    let mut h = FrameHeader {
        buffer: [0u8; HEADER_SIZE],
    };
    h.set_channel(channel);
    h.set_kind(kind);
    h.set_length(len);
    dst.extend_from_slice(h.as_bytes());
}

/// Takes one frame off the front of `buf`: `Ok(None)` when the frame is
/// not complete yet (nothing is consumed; capacity for the rest is
/// reserved), `Ok(Some(frame))` with its bytes consumed, or an error
/// (nothing consumed; the stream cannot be decoded further).
pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
    let Ok(header) = FrameHeader::new_checked(&buf[..]) else {
        return Ok(None);
    };
    let (kind, len) = header.check()?;
    let channel = header.channel();
    let total = HEADER_SIZE + len;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    if kind == Kind::Data {
        // DATA cannot fail past the header check: hand out the bytes
        // without a copy.
        let mut payload = buf.split_to(total);
        payload.advance(HEADER_SIZE);
        return parse(channel, kind, payload.freeze()).map(Some);
    }
    // The other payloads are small (at most MAX_REASON bytes) and may be
    // refused: parse a copy, so that an error consumes nothing.
    let frame = parse(
        channel,
        kind,
        Bytes::copy_from_slice(&buf[HEADER_SIZE..total]),
    )?;
    buf.advance(total);
    Ok(Some(frame))
}

/// [`decode`] at the end of the input: what is left must be empty or one
/// complete frame; a partial frame is [`FrameError::Truncated`].
pub fn decode_eof(buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
    if buf.is_empty() {
        return Ok(None);
    }
    match decode(buf)? {
        Some(f) => Ok(Some(f)),
        None => {
            let need = FrameHeader::new_checked(&buf[..])
                .map(|h| HEADER_SIZE + h.length() as usize)
                .unwrap_or(HEADER_SIZE);
            Err(FrameError::Truncated {
                need,
                got: buf.len(),
            })
        }
    }
}

/// The payload of a frame whose header passed [`FrameHeader::check`].
fn parse(channel: u32, kind: Kind, p: Bytes) -> Result<Frame, FrameError> {
    Ok(match kind {
        Kind::Hello => Frame::Hello(parse_hello(&p)?),
        Kind::Open => Frame::Open(channel),
        Kind::OpenOk => Frame::OpenOk(channel),
        Kind::Eof => Frame::Eof(channel),
        Kind::Data => Frame::Data {
            channel,
            payload: p,
        },
        Kind::Credit => match get_u32(&p, 0..4) {
            0 => return Err(FrameError::ZeroCredit { channel }),
            increment => Frame::Credit { channel, increment },
        },
        Kind::Reset => match std::str::from_utf8(&p) {
            Ok(s) => Frame::Reset {
                channel,
                reason: s.to_owned(),
            },
            Err(_) => return Err(FrameError::BadReason { channel }),
        },
    })
}

fn parse_hello(p: &[u8]) -> Result<Hello, FrameError> {
    // The length check guaranteed magic and version are there.
    let mut found = [0u8; 4];
    found.copy_from_slice(&p[field::MAGIC]);
    if found != MAGIC {
        return Err(FrameError::BadMagic { found });
    }
    let theirs = get_u16(p, field::VERSION);
    if theirs != PROTOCOL_VERSION {
        return Err(FrameError::Version {
            ours: PROTOCOL_VERSION,
            theirs,
        });
    }
    if p.len() != HELLO_SIZE {
        return Err(FrameError::BadHello {
            what: "payload length",
            value: p.len() as u64,
        });
    }
    let role_byte = get_u8(p, field::ROLE);
    let role = Role::from_u8(role_byte).ok_or(FrameError::BadHello {
        what: "role",
        value: u64::from(role_byte),
    })?;
    let reserved = get_u8(p, field::HELLO_RESERVED);
    if reserved != 0 {
        return Err(FrameError::BadHello {
            what: "reserved byte",
            value: u64::from(reserved),
        });
    }
    let window = get_u32(p, field::WINDOW);
    if window == 0 {
        return Err(FrameError::BadHello {
            what: "window",
            value: 0,
        });
    }
    Ok(Hello { role, window })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(f: &Frame) -> Vec<u8> {
        let mut b = BytesMut::new();
        f.encode(&mut b).unwrap();
        assert_eq!(b.len(), f.encoded_len());
        b.to_vec()
    }

    fn dec_all(bytes: &[u8]) -> Result<Vec<Frame>, FrameError> {
        let mut b = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(f) = decode(&mut b)? {
            out.push(f);
        }
        if let Some(f) = decode_eof(&mut b)? {
            out.push(f);
        }
        Ok(out)
    }

    #[test]
    fn header_golden_bytes() {
        let mut h = FrameHeader::new_checked([0u8; 12]).unwrap();
        h.set_channel(0x0102_0304);
        h.set_kind(Kind::Credit);
        h.set_flags(0);
        h.set_reserved(0);
        h.set_length(4);
        let golden = [
            0x04, 0x03, 0x02, 0x01, 0x05, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00,
        ];
        assert_eq!(h.as_bytes(), &golden);
        let v = FrameHeader::new_checked(&golden[..]).unwrap();
        assert_eq!(v.channel(), 0x0102_0304);
        assert_eq!(v.kind_byte(), 5);
        assert_eq!(v.length(), 4);
        assert_eq!(v.check(), Ok((Kind::Credit, 4)));
        assert_eq!(
            FrameHeader::new_checked(&golden[..11]),
            Err(FrameError::Truncated { need: 12, got: 11 })
        );
    }

    #[test]
    fn every_kind_golden_bytes_and_round_trip() {
        let cases: Vec<(Frame, Vec<u8>)> = vec![
            (
                Frame::Hello(Hello {
                    role: Role::Client,
                    window: 0x0004_0000,
                }),
                vec![
                    0, 0, 0, 0, 1, 0, 0, 0, 12, 0, 0, 0, // header
                    b'X', b'C', b'H', b'N', 1, 0, 1, 0, 0x00, 0x00, 0x04, 0x00,
                ],
            ),
            (Frame::Open(3), vec![3, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]),
            (Frame::OpenOk(4), vec![4, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0]),
            (
                Frame::Data {
                    channel: 0x100,
                    payload: Bytes::from_static(b"hi!"),
                },
                vec![0, 1, 0, 0, 4, 0, 0, 0, 3, 0, 0, 0, b'h', b'i', b'!'],
            ),
            (
                Frame::Credit {
                    channel: 5,
                    increment: 0x0001_0000,
                },
                vec![5, 0, 0, 0, 5, 0, 0, 0, 4, 0, 0, 0, 0, 0, 1, 0],
            ),
            (Frame::Eof(7), vec![7, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0]),
            (
                Frame::reset(9, "no"),
                vec![9, 0, 0, 0, 7, 0, 0, 0, 2, 0, 0, 0, b'n', b'o'],
            ),
            (
                Frame::reset(CONNECTION, ""),
                vec![0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0],
            ),
        ];
        let mut stream = Vec::new();
        for (f, golden) in &cases {
            assert_eq!(&enc(f), golden, "{f:?}");
            assert_eq!(dec_all(golden).unwrap(), vec![f.clone()]);
            stream.extend_from_slice(golden);
        }
        let all: Vec<Frame> = cases.into_iter().map(|(f, _)| f).collect();
        assert_eq!(dec_all(&stream).unwrap(), all);
    }

    #[test]
    fn incremental_decoding_byte_by_byte() {
        let frames = [
            Frame::Hello(Hello {
                role: Role::Server,
                window: 1,
            }),
            Frame::Data {
                channel: 2,
                payload: Bytes::from(vec![0xab; MAX_PAYLOAD]),
            },
            Frame::reset(2, "connect to tcp:127.0.0.1:9 refused"),
        ];
        let mut wire = BytesMut::new();
        for f in &frames {
            f.encode(&mut wire).unwrap();
        }
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in wire.iter() {
            buf.extend_from_slice(&[*b]);
            if let Some(f) = decode(&mut buf).unwrap() {
                got.push(f);
            }
        }
        assert!(buf.is_empty());
        assert_eq!(got, frames);
    }

    /// Found by the `chan_frames` fuzz target: a complete frame whose
    /// payload is refused (bad magic, zero credit, non-UTF-8 reason) was
    /// consumed, although an error is documented to consume nothing.
    #[test]
    fn a_refused_payload_consumes_nothing() {
        let mut bad_hello = enc(&Frame::Hello(Hello {
            role: Role::Client,
            window: 1,
        }));
        bad_hello[HEADER_SIZE] = b'Y';
        let mut zero_credit = enc(&Frame::Credit {
            channel: 1,
            increment: 1,
        });
        zero_credit[HEADER_SIZE..].fill(0);
        let mut bad_reason = enc(&Frame::reset(1, "ab"));
        bad_reason[HEADER_SIZE] = 0xff;
        for wire in [bad_hello, zero_credit, bad_reason] {
            let mut b = BytesMut::from(&wire[..]);
            b.extend_from_slice(b"more");
            assert!(decode(&mut b).is_err());
            assert_eq!(b.len(), wire.len() + 4, "nothing consumed");
        }
    }

    #[test]
    fn truncated_input_is_an_error_at_the_end() {
        let wire = enc(&Frame::Data {
            channel: 1,
            payload: Bytes::from_static(b"abcdef"),
        });
        for cut in 1..wire.len() {
            let mut b = BytesMut::from(&wire[..cut]);
            assert_eq!(decode(&mut b), Ok(None), "cut {cut}");
            assert_eq!(b.len(), cut, "nothing consumed");
            let need = if cut < HEADER_SIZE {
                HEADER_SIZE
            } else {
                wire.len()
            };
            assert_eq!(
                decode_eof(&mut b),
                Err(FrameError::Truncated { need, got: cut })
            );
        }
        assert_eq!(decode_eof(&mut BytesMut::new()), Ok(None));
    }

    #[test]
    fn bad_headers_are_refused_before_the_payload() {
        let hdr = |ch: u32, kind: u8, flags: u8, res: u16, len: u32| {
            let mut h = FrameHeader::new_checked([0u8; 12]).unwrap();
            h.set_channel(ch);
            h.set_flags(flags);
            h.set_reserved(res);
            h.set_length(len);
            let mut b = h.into_inner();
            b[4] = kind;
            BytesMut::from(&b[..])
        };
        let cases = [
            (
                hdr(1, 0, 0, 0, 0),
                FrameError::UnknownKind {
                    channel: 1,
                    kind: 0,
                },
            ),
            (
                hdr(1, 0xff, 0, 0, 0),
                FrameError::UnknownKind {
                    channel: 1,
                    kind: 0xff,
                },
            ),
            (
                hdr(1, 4, 1, 0, 1),
                FrameError::Reserved {
                    channel: 1,
                    kind: Kind::Data,
                    flags: 1,
                    reserved: 0,
                },
            ),
            (
                hdr(1, 6, 0, 0x8000, 0),
                FrameError::Reserved {
                    channel: 1,
                    kind: Kind::Eof,
                    flags: 0,
                    reserved: 0x8000,
                },
            ),
            (
                hdr(1, 1, 0, 0, 12),
                FrameError::WrongChannel {
                    channel: 1,
                    kind: Kind::Hello,
                },
            ),
            (
                hdr(0, 4, 0, 0, 1),
                FrameError::WrongChannel {
                    channel: 0,
                    kind: Kind::Data,
                },
            ),
            (
                hdr(1, 4, 0, 0, 0),
                FrameError::BadLength {
                    channel: 1,
                    kind: Kind::Data,
                    len: 0,
                    min: 1,
                    max: MAX_PAYLOAD,
                },
            ),
            // Oversized: refused with only the header there.
            (
                hdr(1, 4, 0, 0, u32::MAX),
                FrameError::BadLength {
                    channel: 1,
                    kind: Kind::Data,
                    len: u32::MAX,
                    min: 1,
                    max: MAX_PAYLOAD,
                },
            ),
            (
                hdr(1, 4, 0, 0, MAX_PAYLOAD as u32 + 1),
                FrameError::BadLength {
                    channel: 1,
                    kind: Kind::Data,
                    len: MAX_PAYLOAD as u32 + 1,
                    min: 1,
                    max: MAX_PAYLOAD,
                },
            ),
            (
                hdr(1, 5, 0, 0, 8),
                FrameError::BadLength {
                    channel: 1,
                    kind: Kind::Credit,
                    len: 8,
                    min: 4,
                    max: 4,
                },
            ),
            (
                hdr(1, 2, 0, 0, 1),
                FrameError::BadLength {
                    channel: 1,
                    kind: Kind::Open,
                    len: 1,
                    min: 0,
                    max: 0,
                },
            ),
            (
                hdr(1, 7, 0, 0, MAX_REASON as u32 + 1),
                FrameError::BadLength {
                    channel: 1,
                    kind: Kind::Reset,
                    len: MAX_REASON as u32 + 1,
                    min: 0,
                    max: MAX_REASON,
                },
            ),
        ];
        for (mut b, want) in cases {
            let before = b.len();
            assert_eq!(decode(&mut b), Err(want));
            assert_eq!(b.len(), before);
        }
    }

    #[test]
    fn bad_payloads_are_refused() {
        let raw = |ch: u32, kind: Kind, p: &[u8]| {
            let mut b = BytesMut::new();
            put_header(&mut b, ch, kind, p.len() as u32);
            b.extend_from_slice(p);
            b
        };
        assert_eq!(
            decode(&mut raw(3, Kind::Credit, &[0, 0, 0, 0])),
            Err(FrameError::ZeroCredit { channel: 3 })
        );
        assert_eq!(
            decode(&mut raw(3, Kind::Reset, &[b'a', 0xff, 0xfe])),
            Err(FrameError::BadReason { channel: 3 })
        );
        let hello = |magic: &[u8; 4], version: u16, role: u8, res: u8, window: u32| {
            let mut p = Vec::from(&magic[..]);
            p.extend_from_slice(&version.to_le_bytes());
            p.extend_from_slice(&[role, res]);
            p.extend_from_slice(&window.to_le_bytes());
            p
        };
        assert_eq!(
            decode(&mut raw(0, Kind::Hello, &hello(b"HTTP", 1, 1, 0, 9))),
            Err(FrameError::BadMagic { found: *b"HTTP" })
        );
        assert_eq!(
            decode(&mut raw(0, Kind::Hello, &hello(b"XCHN", 2, 1, 0, 9))),
            Err(FrameError::Version { ours: 1, theirs: 2 })
        );
        // A future version's longer HELLO is still read as far as the version.
        let mut long = hello(b"XCHN", 7, 1, 0, 9);
        long.extend_from_slice(&[0xee; 100]);
        assert_eq!(
            decode(&mut raw(0, Kind::Hello, &long)),
            Err(FrameError::Version { ours: 1, theirs: 7 })
        );
        let mut long1 = hello(b"XCHN", 1, 1, 0, 9);
        long1.push(0);
        assert_eq!(
            decode(&mut raw(0, Kind::Hello, &long1)),
            Err(FrameError::BadHello {
                what: "payload length",
                value: 13
            })
        );
        for (role, res, window, what, value) in [
            (0u8, 0u8, 9u32, "role", 0u64),
            (3, 0, 9, "role", 3),
            (1, 5, 9, "reserved byte", 5),
            (2, 0, 0, "window", 0),
        ] {
            assert_eq!(
                decode(&mut raw(
                    0,
                    Kind::Hello,
                    &hello(b"XCHN", 1, role, res, window)
                )),
                Err(FrameError::BadHello { what, value })
            );
        }
    }

    #[test]
    fn garbage_never_panics() {
        // A cheap deterministic generator; every prefix of every buffer.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for round in 0..2000 {
            let len = (round % 40) + 1;
            let mut v = Vec::with_capacity(len);
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                v.push(x as u8);
            }
            // Make some headers plausible so payload parsing is reached.
            if round % 3 == 0 && len > 8 {
                v[5..8].fill(0);
                v[4] = (round % 8) as u8;
            }
            let _ = dec_all(&v);
        }
    }

    #[test]
    fn encode_refuses_what_decode_refuses() {
        let mut b = BytesMut::new();
        let bad = [
            Frame::Data {
                channel: 1,
                payload: Bytes::new(),
            },
            Frame::Data {
                channel: 1,
                payload: Bytes::from(vec![0; MAX_PAYLOAD + 1]),
            },
            Frame::Data {
                channel: 0,
                payload: Bytes::from_static(b"x"),
            },
            Frame::Open(0),
            Frame::Credit {
                channel: 1,
                increment: 0,
            },
            Frame::Reset {
                channel: 1,
                reason: "x".repeat(MAX_REASON + 1),
            },
            Frame::Hello(Hello {
                role: Role::Client,
                window: 0,
            }),
        ];
        for f in bad {
            assert!(f.encode(&mut b).is_err(), "{f:?}");
            assert!(b.is_empty(), "{f:?} appended bytes");
        }
    }

    #[test]
    fn reset_reason_is_cut_at_a_char_boundary() {
        let long = "é".repeat(MAX_REASON); // 2 bytes each
        let Frame::Reset { reason, .. } = Frame::reset(1, &long) else {
            unreachable!()
        };
        assert_eq!(reason.len(), MAX_REASON);
        let odd = format!("a{long}");
        let Frame::Reset { reason, .. } = Frame::reset(1, &odd) else {
            unreachable!()
        };
        assert_eq!(reason.len(), MAX_REASON - 1);
    }

    #[test]
    fn roles_and_ids() {
        assert_eq!(Role::Client.first_id(), 1);
        assert_eq!(Role::Server.first_id(), 2);
        assert!(Role::Client.owns(1) && Role::Client.owns(u32::MAX));
        assert!(Role::Server.owns(2) && !Role::Server.owns(3));
        assert!(!Role::Client.owns(0) && !Role::Server.owns(0));
    }
}
