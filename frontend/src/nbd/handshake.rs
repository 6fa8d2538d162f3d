//! The fixed newstyle handshake of the NBD server: option haggling until
//! the client enters transmission (`NBD_OPT_GO`, `NBD_OPT_EXPORT_NAME`)
//! or aborts.
//!
//! ```text
//!   S: NBDMAGIC IHAVEOPT flags          C: client flags
//!   C: IHAVEOPT opt len data ...        S: replies (INFO, META_CONTEXT, ACK, errors)
//!   ... until GO / EXPORT_NAME (transmission) or ABORT (close)
//! ```
//!
//! There is one export, the default one (`""`); another name gets
//! `NBD_REP_ERR_UNKNOWN` (INFO, GO, the meta context options) or a closed
//! connection (EXPORT_NAME, which cannot answer an error). Structured
//! replies are offered (`NBD_OPT_STRUCTURED_REPLY`), and with them one
//! metadata context, `base:allocation`. An option's data is at most
//! [`MAX_OPTION`] bytes.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::proto::*;
use super::server::{Export, ExportInfo, MAX_REQUEST};

/// Largest option data accepted (the connection is closed past it).
pub const MAX_OPTION: u32 = 64 << 10;
/// The one metadata context served.
pub const BASE_ALLOCATION: &str = "base:allocation";
/// Its id in `NBD_REP_META_CONTEXT` and block status replies.
pub const BASE_ALLOCATION_ID: u32 = 1;

/// What the handshake settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    /// The export as it was described.
    pub info: ExportInfo,
    /// Structured replies were negotiated.
    pub structured: bool,
    /// `base:allocation` was selected (with its id).
    pub base_allocation: Option<u32>,
    /// The transmission flags sent.
    pub tflags: u16,
}

pub(super) fn proto_err(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

async fn option_reply<W: AsyncWrite + Unpin>(
    w: &mut W,
    opt: u32,
    kind: u32,
    data: &[u8],
) -> io::Result<()> {
    let mut b = Vec::with_capacity(20 + data.len());
    b.extend_from_slice(&REPLY_MAGIC.to_be_bytes());
    b.extend_from_slice(&opt.to_be_bytes());
    b.extend_from_slice(&kind.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    w.write_all(&b).await
}

/// The transmission flags of `i` (`structured`: structured replies were
/// negotiated, so `NBD_CMD_FLAG_DF` can be honoured).
pub fn transmission_flags(i: &ExportInfo, structured: bool) -> u16 {
    let mut f = FLAG_HAS_FLAGS | FLAG_CAN_MULTI_CONN | FLAG_SEND_CACHE;
    if i.readonly {
        f |= FLAG_READ_ONLY;
    } else {
        f |= FLAG_SEND_WRITE_ZEROES;
        if i.trim {
            f |= FLAG_SEND_TRIM;
        }
        if i.fast_zero {
            f |= FLAG_SEND_FAST_ZERO;
        }
    }
    if i.flush {
        f |= FLAG_SEND_FLUSH | FLAG_SEND_FUA;
    }
    if structured {
        f |= FLAG_SEND_DF;
    }
    f
}

/// The error message for an export name that is not ours.
fn unknown_export(name: &[u8]) -> String {
    format!(
        "no export named {:?}: the only export is the default one (\"\")",
        String::from_utf8_lossy(name)
    )
}

/// Reads a u32-length-prefixed string at `*at`.
fn string<'a>(data: &'a [u8], at: &mut usize) -> Option<&'a [u8]> {
    let n = u32::from_be_bytes(data.get(*at..*at + 4)?.try_into().ok()?) as usize;
    let s = data.get(*at + 4..(*at + 4).checked_add(n)?)?;
    *at += 4 + n;
    Some(s)
}

/// INFO/GO data: name, then u16 count and count x u16 information items.
fn parse_info(data: &[u8]) -> Option<(&[u8], Vec<u16>)> {
    let mut at = 0;
    let name = string(data, &mut at)?;
    let n = u16::from_be_bytes(data.get(at..at + 2)?.try_into().ok()?) as usize;
    let items = data.get(at + 2..)?;
    if items.len() != 2 * n {
        return None;
    }
    Some((
        name,
        items
            .chunks(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect(),
    ))
}

/// LIST/SET_META_CONTEXT data: name, u32 count, count x string.
fn parse_meta(data: &[u8]) -> Option<(&[u8], Vec<&[u8]>)> {
    let mut at = 0;
    let name = string(data, &mut at)?;
    let n = u32::from_be_bytes(data.get(at..at + 4)?.try_into().ok()?) as usize;
    at += 4;
    // Each query takes at least its 4-byte length: a count the data
    // cannot hold is malformed (and allocates nothing).
    if n > (data.len() - at) / 4 {
        return None;
    }
    let mut queries = Vec::with_capacity(n);
    for _ in 0..n {
        queries.push(string(data, &mut at)?);
    }
    (at == data.len()).then_some((name, queries))
}

/// Runs the handshake; `Ok(Some(session))` when the client entered
/// transmission, `Ok(None)` when it aborted.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    export: &dyn Export,
) -> io::Result<Option<Session>> {
    let mut hello = Vec::with_capacity(18);
    hello.extend_from_slice(&NBDMAGIC.to_be_bytes());
    hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
    hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    s.write_all(&hello).await?;
    let cflags = s.read_u32().await?;
    if cflags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Err(proto_err(format!("unknown client flags {cflags:#x}")));
    }
    let no_zeroes = cflags & FLAG_C_NO_ZEROES != 0;
    let mut structured = false;
    let mut base_allocation = None;
    loop {
        if s.read_u64().await? != IHAVEOPT {
            return Err(proto_err("option without IHAVEOPT"));
        }
        let opt = s.read_u32().await?;
        let len = s.read_u32().await?;
        if len > MAX_OPTION {
            return Err(proto_err(format!("option {opt} of {len} bytes")));
        }
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data).await?;
        let session = |info: ExportInfo| Session {
            info,
            structured,
            base_allocation,
            tflags: transmission_flags(&info, structured),
        };
        match opt {
            OPT_EXPORT_NAME => {
                if !data.is_empty() {
                    // No way to answer an error here: the spec says close.
                    return Err(proto_err(format!(
                        "NBD_OPT_EXPORT_NAME: {}",
                        unknown_export(&data)
                    )));
                }
                let Ok(info) = export.info().await else {
                    return Err(proto_err("export unavailable"));
                };
                let session = session(info);
                let mut b = Vec::with_capacity(134);
                b.extend_from_slice(&info.size.to_be_bytes());
                b.extend_from_slice(&session.tflags.to_be_bytes());
                if !no_zeroes {
                    b.extend_from_slice(&[0u8; 124]);
                }
                s.write_all(&b).await?;
                return Ok(Some(session));
            }
            OPT_ABORT => {
                option_reply(s, opt, REP_ACK, &[]).await?;
                return Ok(None);
            }
            OPT_LIST => {
                if len != 0 {
                    option_reply(s, opt, REP_ERR_INVALID, b"NBD_OPT_LIST takes no data").await?;
                    continue;
                }
                option_reply(s, opt, REP_SERVER, &0u32.to_be_bytes()).await?;
                option_reply(s, opt, REP_ACK, &[]).await?;
            }
            OPT_STRUCTURED_REPLY => {
                if len != 0 {
                    let msg = b"NBD_OPT_STRUCTURED_REPLY takes no data";
                    option_reply(s, opt, REP_ERR_INVALID, msg).await?;
                    continue;
                }
                structured = true;
                option_reply(s, opt, REP_ACK, &[]).await?;
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                if !structured {
                    let msg = b"negotiate NBD_OPT_STRUCTURED_REPLY first";
                    option_reply(s, opt, REP_ERR_INVALID, msg).await?;
                    continue;
                }
                let Some((name, queries)) = parse_meta(&data) else {
                    option_reply(s, opt, REP_ERR_INVALID, b"malformed meta context option").await?;
                    continue;
                };
                if !name.is_empty() {
                    let msg = unknown_export(name);
                    option_reply(s, opt, REP_ERR_UNKNOWN, msg.as_bytes()).await?;
                    continue;
                }
                let base = BASE_ALLOCATION.as_bytes();
                let chosen = if opt == OPT_LIST_META_CONTEXT {
                    // No query lists all; "base:" lists the namespace.
                    queries.is_empty() || queries.iter().any(|q| *q == base || *q == b"base:")
                } else {
                    queries.contains(&base)
                };
                let id = if opt == OPT_SET_META_CONTEXT {
                    base_allocation = chosen.then_some(BASE_ALLOCATION_ID);
                    BASE_ALLOCATION_ID
                } else {
                    0
                };
                if chosen {
                    let mut d = id.to_be_bytes().to_vec();
                    d.extend_from_slice(base);
                    option_reply(s, opt, REP_META_CONTEXT, &d).await?;
                }
                option_reply(s, opt, REP_ACK, &[]).await?;
            }
            OPT_INFO | OPT_GO => {
                let Some((name, wanted)) = parse_info(&data) else {
                    option_reply(s, opt, REP_ERR_INVALID, b"malformed NBD_OPT_INFO/GO").await?;
                    continue;
                };
                if !name.is_empty() {
                    let msg = unknown_export(name);
                    option_reply(s, opt, REP_ERR_UNKNOWN, msg.as_bytes()).await?;
                    continue;
                }
                let info = match export.info().await {
                    Ok(i) => i,
                    Err(_) => {
                        option_reply(s, opt, REP_ERR_SHUTDOWN, b"export unavailable").await?;
                        continue;
                    }
                };
                let session = session(info);
                let mut e = Vec::with_capacity(12);
                e.extend_from_slice(&INFO_EXPORT.to_be_bytes());
                e.extend_from_slice(&info.size.to_be_bytes());
                e.extend_from_slice(&session.tflags.to_be_bytes());
                option_reply(s, opt, REP_INFO, &e).await?;
                if wanted.contains(&INFO_BLOCK_SIZE) {
                    // Any alignment works (unaligned writes are
                    // read-modify-write); 4 KiB is best.
                    let mut b = Vec::with_capacity(14);
                    b.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
                    b.extend_from_slice(&1u32.to_be_bytes());
                    b.extend_from_slice(&4096u32.to_be_bytes());
                    b.extend_from_slice(&MAX_REQUEST.to_be_bytes());
                    option_reply(s, opt, REP_INFO, &b).await?;
                }
                option_reply(s, opt, REP_ACK, &[]).await?;
                if opt == OPT_GO {
                    return Ok(Some(session));
                }
            }
            OPT_STARTTLS => {
                option_reply(s, opt, REP_ERR_POLICY, b"no TLS on a local export").await?;
            }
            _ => option_reply(s, opt, REP_ERR_UNSUP, &[]).await?,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_context_data_is_parsed_strictly() {
        let mut d = 0u32.to_be_bytes().to_vec();
        d.extend_from_slice(&2u32.to_be_bytes());
        for q in [&b"base:allocation"[..], b"x-foo:bar"] {
            d.extend_from_slice(&(q.len() as u32).to_be_bytes());
            d.extend_from_slice(q);
        }
        let (name, qs) = parse_meta(&d).unwrap();
        assert_eq!(
            (name, qs),
            (&b""[..], vec![&b"base:allocation"[..], b"x-foo:bar"])
        );
        // Trailing bytes, a short query, a count the data cannot hold.
        let mut longer = d.clone();
        longer.push(0);
        assert!(parse_meta(&longer).is_none());
        assert!(parse_meta(&d[..d.len() - 1]).is_none());
        let mut huge = 0u32.to_be_bytes().to_vec();
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(parse_meta(&huge).is_none());
        let mut wild = u32::MAX.to_be_bytes().to_vec();
        wild.extend_from_slice(&[0; 8]);
        assert!(parse_meta(&wild).is_none());
    }
}
