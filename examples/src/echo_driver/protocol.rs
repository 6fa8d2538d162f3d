//! The echo driver's protocol: two 64-byte messages on a ring.h ring, and
//! what the backend computes. No I/O here; the devices that carry these
//! messages are in the parent module.
//!
//! ```text
//!  request                                  response
//!  0       8    9     10        16      64  0       8        10    11        16      64
//!  +-------+----+-----+---------+-------+   +-------+--------+-----+---------+-------+
//!  | id    | op | len | (zero)  | data  |   | id    | status | len | (zero)  | data  |
//!  | u64   | u8 | u8  | 6 bytes | 48    |   | u64   | i16    | u8  | 5 bytes | 48    |
//!  +-------+----+-----+---------+-------+   +-------+--------+-----+---------+-------+
//!  little-endian; aligned to 8 (the u64); unused bytes are written as zero
//!  and ignored when read
//! ```
//!
//! A C peer would declare the same with Xen's `io/ring.h`:
//!
//! ```c
//! struct echo_request  { uint64_t id; uint8_t op; uint8_t len; uint8_t pad[6]; uint8_t data[48]; };
//! struct echo_response { uint64_t id; int16_t status; uint8_t len; uint8_t pad[5]; uint8_t data[48]; };
//! DEFINE_RING_TYPES(echo, struct echo_request, struct echo_response);
//! ```
//!
//! A request's `op` and `len` are whatever the peer wrote: [`answer`]
//! checks both and refuses what it cannot serve with a status.

use xenring::ring::{RingEntry, Tagged};

/// The device kind: `backend/echo/...` and `device/echo/...` in XenStore.
pub const KIND: &str = "echo";

/// The backend key listing the ops it serves, comma-separated
/// (`upper,reverse,sum`); the frontend reads it before connecting.
pub const FEATURE_OPS: &str = "feature-ops";

/// Payload bytes a request or response carries.
pub const PAYLOAD: usize = 48;

/// The answer was computed.
pub const STATUS_OK: i16 = 0;
/// The request's op is not one the backend serves.
pub const STATUS_BAD_OP: i16 = -1;
/// The request's `len` is larger than [`PAYLOAD`].
pub const STATUS_BAD_LEN: i16 = -2;

/// What a request asks the backend to do with its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// ASCII upper case (other bytes unchanged).
    Upper,
    /// The bytes in reverse order.
    Reverse,
    /// The sum of the bytes, as a little-endian u64 (8 bytes).
    Sum,
}

impl Op {
    /// Every op, in wire order.
    pub const ALL: [Op; 3] = [Op::Upper, Op::Reverse, Op::Sum];

    /// The byte on the wire.
    pub const fn code(self) -> u8 {
        match self {
            Op::Upper => 1,
            Op::Reverse => 2,
            Op::Sum => 3,
        }
    }

    /// The op of a wire byte, if it is one.
    pub fn from_code(code: u8) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.code() == code)
    }

    /// Its name in [`FEATURE_OPS`].
    pub fn name(self) -> &'static str {
        match self {
            Op::Upper => "upper",
            Op::Reverse => "reverse",
            Op::Sum => "sum",
        }
    }

    /// The ops named in a [`FEATURE_OPS`] value; names this side does not
    /// know are skipped (a newer backend may offer more).
    pub fn parse_list(value: &str) -> Vec<Op> {
        value
            .split(',')
            .filter_map(|name| Op::ALL.into_iter().find(|op| op.name() == name.trim()))
            .collect()
    }
}

/// Byte ranges of the two messages (the diagram in the module docs).
mod field {
    use std::ops::Range;

    pub const SIZE: usize = 64;
    pub const ID: Range<usize> = 0..8;
    pub const REQ_OP: usize = 8;
    pub const REQ_LEN: usize = 9;
    pub const RSP_STATUS: Range<usize> = 8..10;
    pub const RSP_LEN: usize = 10;
    pub const DATA: Range<usize> = 16..64;
}

const _: () = assert!(field::DATA.end == field::SIZE);
const _: () = assert!(field::DATA.end - field::DATA.start == PAYLOAD);
const _: () = assert!(field::REQ_LEN < field::DATA.start && field::RSP_LEN < field::DATA.start);

/// Copies `bytes` (the ring hands over exactly 64, but a decoder must not
/// trust even that) into a zeroed 64-byte array.
fn to_array(bytes: &[u8]) -> [u8; field::SIZE] {
    let mut b = [0u8; field::SIZE];
    let n = bytes.len().min(field::SIZE);
    b[..n].copy_from_slice(&bytes[..n]);
    b
}

fn read_id(b: &[u8; field::SIZE]) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[field::ID]);
    u64::from_le_bytes(v)
}

/// A request, as copied out of the ring. `op` and `len` are kept as the
/// peer wrote them: a backend checks them (see [`answer`]), it does not
/// trust them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EchoRequest {
    /// Chosen by the frontend (`RingClient::call` sets it), echoed by the
    /// backend.
    pub id: u64,
    /// An [`Op::code`], or anything a peer wrote.
    pub op: u8,
    /// Payload bytes used, or anything a peer wrote.
    pub len: u8,
    /// The payload (bytes past `len` are zero when we write them).
    pub data: [u8; PAYLOAD],
}

impl EchoRequest {
    /// A request for `op` on `payload`; `None` if `payload` is longer than
    /// [`PAYLOAD`] bytes.
    pub fn new(op: Op, payload: &[u8]) -> Option<EchoRequest> {
        let mut data = [0u8; PAYLOAD];
        data.get_mut(..payload.len())?.copy_from_slice(payload);
        Some(EchoRequest {
            id: 0,
            op: op.code(),
            len: payload.len() as u8,
            data,
        })
    }

    /// The payload, or `None` if `len` is out of range.
    pub fn payload(&self) -> Option<&[u8]> {
        self.data.get(..usize::from(self.len))
    }
}

impl RingEntry for EchoRequest {
    const SIZE: usize = field::SIZE;
    const ALIGN: usize = 8;

    fn decode(bytes: &[u8]) -> Self {
        let b = to_array(bytes);
        let mut data = [0u8; PAYLOAD];
        data.copy_from_slice(&b[field::DATA]);
        EchoRequest {
            id: read_id(&b),
            op: b[field::REQ_OP],
            len: b[field::REQ_LEN],
            data,
        }
    }

    fn encode(&self, out: &mut [u8]) {
        out[field::ID].copy_from_slice(&self.id.to_le_bytes());
        out[field::REQ_OP] = self.op;
        out[field::REQ_LEN] = self.len;
        out[field::DATA].copy_from_slice(&self.data);
    }
}

impl Tagged for EchoRequest {
    fn id(&self) -> u64 {
        self.id
    }
    fn set_id(&mut self, id: u64) {
        self.id = id;
    }
}

/// A response, as copied out of the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EchoResponse {
    /// The request's id.
    pub id: u64,
    /// [`STATUS_OK`], or why the request was refused.
    pub status: i16,
    /// Payload bytes used.
    pub len: u8,
    /// The result.
    pub data: [u8; PAYLOAD],
}

impl EchoResponse {
    /// A successful answer carrying `result` (at most [`PAYLOAD`] bytes;
    /// longer is cut).
    pub fn ok(id: u64, result: &[u8]) -> EchoResponse {
        let n = result.len().min(PAYLOAD);
        let mut data = [0u8; PAYLOAD];
        data[..n].copy_from_slice(&result[..n]);
        EchoResponse {
            id,
            status: STATUS_OK,
            len: n as u8,
            data,
        }
    }

    /// A refusal with `status` and no payload.
    pub fn refused(id: u64, status: i16) -> EchoResponse {
        EchoResponse {
            id,
            status,
            len: 0,
            data: [0u8; PAYLOAD],
        }
    }

    /// The payload, or `None` if `len` is out of range.
    pub fn payload(&self) -> Option<&[u8]> {
        self.data.get(..usize::from(self.len))
    }
}

impl RingEntry for EchoResponse {
    const SIZE: usize = field::SIZE;
    const ALIGN: usize = 8;

    fn decode(bytes: &[u8]) -> Self {
        let b = to_array(bytes);
        let mut data = [0u8; PAYLOAD];
        data.copy_from_slice(&b[field::DATA]);
        EchoResponse {
            id: read_id(&b),
            status: i16::from_le_bytes([
                b[field::RSP_STATUS.start],
                b[field::RSP_STATUS.start + 1],
            ]),
            len: b[field::RSP_LEN],
            data,
        }
    }

    fn encode(&self, out: &mut [u8]) {
        out[field::ID].copy_from_slice(&self.id.to_le_bytes());
        out[field::RSP_STATUS].copy_from_slice(&self.status.to_le_bytes());
        out[field::RSP_LEN] = self.len;
        out[field::DATA].copy_from_slice(&self.data);
    }
}

impl Tagged for EchoResponse {
    fn id(&self) -> u64 {
        self.id
    }
    fn set_id(&mut self, id: u64) {
        self.id = id;
    }
}

/// The backend's work: the answer to `req`, whatever bytes it holds. A bad
/// op or length is refused with a status, never a panic.
pub fn answer(req: &EchoRequest) -> EchoResponse {
    let Some(op) = Op::from_code(req.op) else {
        return EchoResponse::refused(req.id, STATUS_BAD_OP);
    };
    let Some(input) = req.payload() else {
        return EchoResponse::refused(req.id, STATUS_BAD_LEN);
    };
    match op {
        Op::Upper => EchoResponse::ok(req.id, &input.to_ascii_uppercase()),
        Op::Reverse => {
            let reversed: Vec<u8> = input.iter().rev().copied().collect();
            EchoResponse::ok(req.id, &reversed)
        }
        Op::Sum => {
            let sum: u64 = input.iter().map(|&b| u64::from(b)).sum();
            EchoResponse::ok(req.id, &sum.to_le_bytes())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode<T: RingEntry>(v: &T) -> Vec<u8> {
        let mut out = vec![0u8; T::SIZE];
        v.encode(&mut out);
        out
    }

    #[test]
    fn request_golden_bytes() {
        let mut req = EchoRequest::new(Op::Reverse, b"abc").unwrap();
        req.id = 0x0102_0304_0506_0708;
        let mut want = [0u8; 64];
        want[..8].copy_from_slice(&[0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01]);
        want[8] = 2; // op: reverse
        want[9] = 3; // len
        want[16..19].copy_from_slice(b"abc");
        assert_eq!(encode(&req), want);
        assert_eq!(EchoRequest::decode(&want), req);
    }

    #[test]
    fn response_golden_bytes() {
        let rsp = EchoResponse::refused(0x1122, STATUS_BAD_LEN);
        let mut want = [0u8; 64];
        want[..2].copy_from_slice(&[0x22, 0x11]);
        want[8..10].copy_from_slice(&[0xfe, 0xff]); // -2, little-endian
        assert_eq!(encode(&rsp), want);
        assert_eq!(EchoResponse::decode(&want), rsp);

        let rsp = EchoResponse::ok(7, b"XY");
        let mut want = [0u8; 64];
        want[0] = 7;
        want[10] = 2;
        want[16..18].copy_from_slice(b"XY");
        assert_eq!(encode(&rsp), want);
        assert_eq!(EchoResponse::decode(&want), rsp);
    }

    #[test]
    fn reserved_bytes_are_ignored_when_read() {
        let mut bytes = [0u8; 64];
        bytes[8] = 1;
        bytes[9] = 2;
        bytes[10..16].fill(0xee);
        bytes[16..18].copy_from_slice(b"ok");
        let req = EchoRequest::decode(&bytes);
        assert_eq!(req.payload(), Some(&b"ok"[..]));
        // Written back, they are zero.
        assert_eq!(encode(&req)[10..16], [0u8; 6]);
    }

    #[test]
    fn the_backend_answers_each_op() {
        let ask = |op, p: &[u8]| answer(&EchoRequest::new(op, p).unwrap());
        assert_eq!(
            ask(Op::Upper, b"hello, xen").payload(),
            Some(&b"HELLO, XEN"[..])
        );
        assert_eq!(
            ask(Op::Reverse, b"hello, xen").payload(),
            Some(&b"nex ,olleh"[..])
        );
        assert_eq!(
            ask(Op::Sum, b"hello, xen").payload(),
            Some(&939u64.to_le_bytes()[..])
        );
        let full = [0xffu8; PAYLOAD];
        assert_eq!(
            ask(Op::Sum, &full).payload(),
            Some(&(255u64 * 48).to_le_bytes()[..])
        );
        assert!(EchoRequest::new(Op::Upper, &[0u8; PAYLOAD + 1]).is_none());
    }

    #[test]
    fn bad_ops_and_lengths_get_a_status() {
        let mut req = EchoRequest::new(Op::Upper, b"x").unwrap();
        req.id = 5;
        req.op = 0;
        assert_eq!(answer(&req), EchoResponse::refused(5, STATUS_BAD_OP));
        req.op = Op::Upper.code();
        req.len = PAYLOAD as u8 + 1;
        assert_eq!(answer(&req), EchoResponse::refused(5, STATUS_BAD_LEN));
    }

    #[test]
    fn garbage_never_panics() {
        // A small xorshift generator: deterministic, no dependency.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..10_000 {
            let mut bytes = [0u8; 64];
            for chunk in bytes.chunks_mut(8) {
                chunk.copy_from_slice(&next().to_le_bytes());
            }
            let req = EchoRequest::decode(&bytes);
            let rsp = answer(&req);
            assert_eq!(rsp.id, req.id);
            assert!(rsp.payload().is_some());
            // What we encode decodes to the same response.
            assert_eq!(EchoResponse::decode(&encode(&rsp)), rsp);
            let _ = EchoResponse::decode(&bytes).payload();
        }
        // Even a decoder handed the wrong length does not panic.
        for n in [0, 1, 8, 63, 65, 200] {
            let _ = EchoRequest::decode(&vec![0xab; n]);
            let _ = EchoResponse::decode(&vec![0xab; n]);
        }
    }

    #[test]
    fn feature_lists_parse() {
        assert_eq!(Op::parse_list("upper,reverse,sum"), Op::ALL.to_vec());
        assert_eq!(
            Op::parse_list(" sum , rot13,upper"),
            vec![Op::Sum, Op::Upper]
        );
        assert!(Op::parse_list("").is_empty());
        for op in Op::ALL {
            assert_eq!(Op::from_code(op.code()), Some(op));
        }
        assert_eq!(Op::from_code(0), None);
    }
}
