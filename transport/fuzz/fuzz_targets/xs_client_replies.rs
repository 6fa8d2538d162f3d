//! Fuzzes what a XenStore client makes of a hostile server's replies.
//!
//! Part one, the codec: the input is a reply stream; it is decoded with
//! [`decode`] and, message by message, given to the parsers the client
//! applies to replies ([`XsMsg::parts`], [`XsMsg::error_name`], a
//! permission list parsed as `GET_PERMS` does, the `T`/`F` answer of
//! `IS_DOMAIN_INTRODUCED`). Asserted: no panic; a decoded message
//! re-encodes to the bytes it came from; a header announcing more than
//! the 4096-byte payload limit is an error at once; a parsed permission
//! prints back to a string that parses to the same permission.
//!
//! Part two, the connection ([`XsConn`], when the first byte's low bit is
//! set): a fake xenstored on a Unix socket answers each request with what
//! the script says (a reply echoing the request's id with any type and
//! payload, a reply to an id never asked, a watch event, raw bytes, an
//! oversized header, or several of these), then goes away. Asserted: no
//! panic; every reply a request gets carries that request's id; once the
//! server is gone every call fails (nothing hangs: a hang would be a
//! libFuzzer timeout) and [`XsConn::closed`] resolves.
#![no_main]

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;
use xenring::xenstore::codec::{decode, read_msg, XsType};
use xenring::xenstore::conn::XsConn;
use xenring::xenstore::{Perm, XsMsg};

/// Reads the script one byte at a time; the end of the input reads as 0.
struct Script<'a>(&'a [u8]);

impl Script<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a.to_vec()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What the client does with a reply's payload.
fn parse_reply(msg: &XsMsg) {
    let _ = msg.kind();
    let _ = msg.error_name();
    let parts = msg.parts();
    for p in &parts {
        if let Some(perm) = std::str::from_utf8(p)
            .ok()
            .and_then(|s| s.parse::<Perm>().ok())
        {
            let text = perm.to_string();
            assert_eq!(
                Perm::from_str(&text).ok(),
                Some(perm),
                "{text:?} round trips"
            );
        }
    }
    match parts.first().copied() {
        Some(b"T") | Some(b"F") | None => {}
        Some(_) => {}
    }
    let _ = parts
        .first()
        .map(|first| String::from_utf8_lossy(first).into_owned());
}

fn codec(data: &[u8]) {
    let mut rest = data;
    loop {
        match decode(rest) {
            Ok(Some((msg, used))) => {
                assert!(msg.payload.len() <= 4096);
                assert_eq!(msg.to_bytes(), &rest[..used], "re-encodes to its bytes");
                parse_reply(&msg);
                rest = &rest[used..];
            }
            Ok(None) => {
                assert!(rest.len() < 16 + 4096);
                break;
            }
            Err(_) => {
                let len = u32::from_le_bytes(rest[12..16].try_into().expect("4"));
                assert!(len > 4096, "only an oversized length is an error");
                break;
            }
        }
    }
}

/// One socket path per execution, removed once connected (nothing is left
/// behind in the temporary folder).
fn socket_path() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "xs-client-fuzz-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

fn header(ty: u32, req_id: u32, tx_id: u32, len: u32) -> Vec<u8> {
    [ty, req_id, tx_id, len]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
}

async fn session(mut s: Script<'_>) {
    let path = socket_path();
    let listener = UnixListener::bind(&path).expect("bind");
    let conn = XsConn::connect(&path, None).await.expect("connect");
    let (server, _) = listener.accept().await.expect("accept");
    let _ = std::fs::remove_file(&path);
    let (mut srd, mut swr) = server.into_split();

    let client = async {
        let mut n = 0u32;
        loop {
            let msg =
                XsMsg::with_strings(XsType::Read, 0, 0, &[b"/local/domain/1/x".as_slice()], true)
                    .expect("request");
            match conn.request(msg).await {
                Ok(reply) => {
                    n += 1;
                    assert_eq!(reply.req_id, n, "the reply to our request");
                    parse_reply(&reply);
                }
                Err(_) => break,
            }
        }
        conn.closed().await;
        assert!(conn.is_closed());
        assert!(conn
            .request(
                XsMsg::with_strings(XsType::Read, 0, 0, &[b"/".as_slice()], true).expect("request")
            )
            .await
            .is_err());
    };
    let fake = async move {
        while !s.is_empty() {
            let Ok(Some(req)) = read_msg(&mut srd).await else {
                break;
            };
            let mut out = Vec::new();
            // Whether the client will read an answer and ask again; if not
            // (no answer, or the framing broken), the server goes away
            // rather than wait for a request that will not come.
            let mut answered = false;
            let mut broken = false;
            // Several things before (and including, or not) the answer.
            for _ in 0..(1 + s.byte() % 3) {
                let op = s.byte();
                match op % 6 {
                    0 | 1 => {
                        let ty = if op & 0x80 != 0 {
                            s.u32() % 32
                        } else {
                            XsType::Read.raw()
                        };
                        let len = usize::from(s.byte()) * 16;
                        let payload = s.take(len);
                        out.extend(header(ty, req.req_id, s.u32() % 3, payload.len() as u32));
                        out.extend(payload);
                        answered |= ty != XsType::WatchEvent.raw();
                    }
                    2 => {
                        // A reply to an id never asked (or asked before).
                        let n = usize::from(s.byte());
                        let payload = s.take(n);
                        out.extend(header(XsType::Read.raw(), s.u32(), 0, payload.len() as u32));
                        out.extend(payload);
                    }
                    3 => {
                        let n = usize::from(s.byte());
                        let payload = s.take(n);
                        out.extend(header(XsType::WatchEvent.raw(), 0, 0, payload.len() as u32));
                        out.extend(payload);
                    }
                    4 => {
                        let n = usize::from(s.byte() % 32);
                        out.extend(s.take(n));
                        broken = true;
                    }
                    _ => {
                        out.extend(header(
                            XsType::Read.raw(),
                            req.req_id,
                            0,
                            4097 + s.u32() % 1000,
                        ));
                        broken = true;
                    }
                }
            }
            if swr.write_all(&out).await.is_err() || broken || !answered {
                break;
            }
        }
        // The server goes away.
        drop(swr);
        drop(srd);
    };
    futures::join!(client, fake);
}

fuzz_target!(|data: &[u8]| {
    let mode = data.first().copied().unwrap_or(0);
    let rest = &data[1.min(data.len())..];
    if mode & 1 == 0 {
        codec(rest);
    } else {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .expect("runtime");
        rt.block_on(session(Script(rest)));
    }
});
