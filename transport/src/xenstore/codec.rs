//! The xs_wire codec: one message type for server and client, framing from
//! bytes (sans-IO) and over tokio streams, and the payload conventions
//! (NUL-separated strings, `"OK\0"`, error names).
//!
//! The payload limit ([`XENSTORE_PAYLOAD_MAX`], 4096 bytes) is enforced on
//! both sides: [`XsMsg::new`] refuses to build a larger message, and
//! [`decode`] refuses a header announcing one before reading its payload.

use std::fmt;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::abi::xs_wire::XsHeader;
pub use crate::abi::xs_wire::{XsErrno, XsType, XENSTORE_PAYLOAD_MAX};

/// Size of the message header.
pub const HEADER_SIZE: usize = 16;

/// Why bytes are not a valid message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The header announces, or the caller built, a payload over the limit.
    #[error("xenstore payload of {len} bytes exceeds the {XENSTORE_PAYLOAD_MAX}-byte limit")]
    TooLong {
        /// The length.
        len: usize,
    },
    /// The payload is not what the message type needs.
    #[error("malformed {what} payload: {why}")]
    Malformed {
        /// The message type.
        what: &'static str,
        /// What is wrong.
        why: &'static str,
    },
}

/// One xs_wire message. `ty` stays raw so that a server can answer a type it
/// does not know.
#[derive(Clone, PartialEq, Eq)]
pub struct XsMsg {
    /// Message type number.
    pub ty: u32,
    /// Request id, echoed in the reply.
    pub req_id: u32,
    /// Transaction id (0: none), echoed in the reply.
    pub tx_id: u32,
    /// The payload (at most [`XENSTORE_PAYLOAD_MAX`] bytes).
    pub payload: Vec<u8>,
}

impl fmt::Debug for XsMsg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = XsType::from_raw(self.ty).map_or("?", XsType::name);
        write!(
            f,
            "XsMsg({name}/{} req {} tx {} {:?})",
            self.ty,
            self.req_id,
            self.tx_id,
            String::from_utf8_lossy(&self.payload)
        )
    }
}

impl XsMsg {
    /// A message; refused if the payload is over the limit.
    pub fn new(ty: XsType, req_id: u32, tx_id: u32, payload: Vec<u8>) -> Result<XsMsg, CodecError> {
        if payload.len() > XENSTORE_PAYLOAD_MAX {
            return Err(CodecError::TooLong { len: payload.len() });
        }
        Ok(XsMsg {
            ty: ty.raw(),
            req_id,
            tx_id,
            payload,
        })
    }

    /// A message whose payload is `parts`, each followed by a NUL (the form
    /// of paths, lists and most arguments). With `trailing_nul` false the
    /// last part has no NUL after it (the form of a WRITE's value).
    pub fn with_strings(
        ty: XsType,
        req_id: u32,
        tx_id: u32,
        parts: &[&[u8]],
        trailing_nul: bool,
    ) -> Result<XsMsg, CodecError> {
        let mut payload = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
        for (i, p) in parts.iter().enumerate() {
            payload.extend_from_slice(p);
            if trailing_nul || i + 1 < parts.len() {
                payload.push(0);
            }
        }
        XsMsg::new(ty, req_id, tx_id, payload)
    }

    /// The reply `"OK\0"` of type `ty` to request (`req_id`, `tx_id`).
    pub fn ok(ty: u32, req_id: u32, tx_id: u32) -> XsMsg {
        XsMsg {
            ty,
            req_id,
            tx_id,
            payload: b"OK\0".to_vec(),
        }
    }

    /// The error reply naming `errno`.
    pub fn error(req_id: u32, tx_id: u32, errno: XsErrno) -> XsMsg {
        let mut payload = errno.as_str().as_bytes().to_vec();
        payload.push(0);
        XsMsg {
            ty: XsType::Error.raw(),
            req_id,
            tx_id,
            payload,
        }
    }

    /// The known type, if it is one.
    pub fn kind(&self) -> Option<XsType> {
        XsType::from_raw(self.ty)
    }

    /// For an error reply, the error it names.
    pub fn error_name(&self) -> Option<XsErrno> {
        if self.kind() != Some(XsType::Error) {
            return None;
        }
        let name = self.payload.strip_suffix(b"\0").unwrap_or(&self.payload);
        std::str::from_utf8(name).ok().and_then(XsErrno::from_name)
    }

    /// The payload's NUL-terminated parts (a trailing NUL ends the last part;
    /// bytes after the last NUL form one more part).
    pub fn parts(&self) -> Vec<&[u8]> {
        split_nul(&self.payload)
    }

    /// The header and payload as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![0u8; HEADER_SIZE + self.payload.len()];
        let mut h = XsHeader::new_unchecked(&mut out[..HEADER_SIZE]);
        h.set_msg_type(self.ty);
        h.set_req_id(self.req_id);
        h.set_tx_id(self.tx_id);
        h.set_len(self.payload.len() as u32);
        out[HEADER_SIZE..].copy_from_slice(&self.payload);
        out
    }
}

/// Splits a payload into its NUL-terminated parts.
pub fn split_nul(payload: &[u8]) -> Vec<&[u8]> {
    if payload.is_empty() {
        return Vec::new();
    }
    let body = payload.strip_suffix(b"\0").unwrap_or(payload);
    body.split(|b| *b == 0).collect()
}

/// Parses one message from the front of `buf`: `Ok(None)` if more bytes are
/// needed, else the message and how many bytes it took. A header announcing
/// more than [`XENSTORE_PAYLOAD_MAX`] is an error at once.
pub fn decode(buf: &[u8]) -> Result<Option<(XsMsg, usize)>, CodecError> {
    if buf.len() < HEADER_SIZE {
        return Ok(None);
    }
    let h = XsHeader::new_unchecked(&buf[..HEADER_SIZE]);
    let len = h.len() as usize;
    if len > XENSTORE_PAYLOAD_MAX {
        return Err(CodecError::TooLong { len });
    }
    if buf.len() < HEADER_SIZE + len {
        return Ok(None);
    }
    let msg = XsMsg {
        ty: h.msg_type(),
        req_id: h.req_id(),
        tx_id: h.tx_id(),
        payload: buf[HEADER_SIZE..HEADER_SIZE + len].to_vec(),
    };
    Ok(Some((msg, HEADER_SIZE + len)))
}

/// Reads one message; `Ok(None)` on a clean EOF before a header. An
/// oversized header is an `InvalidData` error and nothing more is read.
pub async fn read_msg<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<XsMsg>> {
    let mut hdr = [0u8; HEADER_SIZE];
    let mut got = 0;
    while got < HEADER_SIZE {
        let n = r.read(&mut hdr[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        got += n;
    }
    let h = XsHeader::new_unchecked(&hdr[..]);
    let len = h.len() as usize;
    if len > XENSTORE_PAYLOAD_MAX {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            CodecError::TooLong { len },
        ));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Ok(Some(XsMsg {
        ty: h.msg_type(),
        req_id: h.req_id(),
        tx_id: h.tx_id(),
        payload,
    }))
}

/// Writes one message.
pub async fn write_msg<W: AsyncWrite + Unpin>(w: &mut W, msg: &XsMsg) -> std::io::Result<()> {
    w.write_all(&msg.to_bytes()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_request_golden_bytes() {
        let m = XsMsg::with_strings(XsType::Read, 7, 3, &[b"/local/domain/1/name"], true).unwrap();
        let b = m.to_bytes();
        assert_eq!(&b[..16], &[2, 0, 0, 0, 7, 0, 0, 0, 3, 0, 0, 0, 21, 0, 0, 0]);
        assert_eq!(&b[16..], b"/local/domain/1/name\0");
        assert_eq!(decode(&b).unwrap(), Some((m, b.len())));
    }

    #[test]
    fn write_value_has_no_trailing_nul_and_lists_split() {
        let m = XsMsg::with_strings(XsType::Write, 1, 0, &[b"a/b", b"value"], false).unwrap();
        assert_eq!(m.payload, b"a/b\0value");
        assert_eq!(m.parts(), vec![&b"a/b"[..], b"value"]);
        let l = XsMsg::with_strings(XsType::Directory, 1, 0, &[b"x", b"y"], true).unwrap();
        assert_eq!(l.payload, b"x\0y\0");
        assert_eq!(l.parts(), vec![&b"x"[..], b"y"]);
        assert!(split_nul(b"").is_empty());
    }

    #[test]
    fn errors_and_ok() {
        let e = XsMsg::error(4, 2, XsErrno::Eacces);
        assert_eq!((e.ty, e.req_id, e.tx_id), (16, 4, 2));
        assert_eq!(e.payload, b"EACCES\0");
        assert_eq!(e.error_name(), Some(XsErrno::Eacces));
        assert_eq!(XsMsg::ok(11, 1, 0).payload, b"OK\0");
        assert_eq!(XsMsg::ok(11, 1, 0).error_name(), None);
    }

    #[test]
    fn payload_limit_on_both_sides() {
        assert!(XsMsg::new(XsType::Write, 0, 0, vec![b'x'; 4096]).is_ok());
        assert_eq!(
            XsMsg::new(XsType::Write, 0, 0, vec![b'x'; 4097]),
            Err(CodecError::TooLong { len: 4097 })
        );
        let mut hdr = XsMsg::ok(2, 0, 0).to_bytes();
        hdr[12..16].copy_from_slice(&5000u32.to_le_bytes());
        assert_eq!(decode(&hdr[..16]), Err(CodecError::TooLong { len: 5000 }));
    }

    #[test]
    fn partial_input_asks_for_more() {
        let b = XsMsg::ok(11, 9, 0).to_bytes();
        for cut in 0..b.len() {
            assert_eq!(decode(&b[..cut]).unwrap(), None, "cut at {cut}");
        }
        let mut two = b.clone();
        two.extend_from_slice(&b);
        let (m, used) = decode(&two).unwrap().unwrap();
        assert_eq!(used, b.len());
        assert_eq!(m.req_id, 9);
    }

    #[tokio::test]
    async fn async_framing_round_trips_and_refuses_oversize() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let m = XsMsg::with_strings(XsType::Watch, 5, 0, &[b"/x", b"tok"], true).unwrap();
        let m2 = m.clone();
        let w = tokio::spawn(async move {
            write_msg(&mut a, &m2).await.unwrap();
            let mut bad = XsMsg::ok(2, 0, 0).to_bytes();
            bad[12..16].copy_from_slice(&4097u32.to_le_bytes());
            a.write_all(&bad[..16]).await.unwrap();
        });
        assert_eq!(read_msg(&mut b).await.unwrap(), Some(m));
        let err = read_msg(&mut b).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        w.await.unwrap();
        assert_eq!(read_msg(&mut b).await.unwrap(), None, "clean EOF");
    }
}
