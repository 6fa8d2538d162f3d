//! Fuzzes the NBD server (`xenring_frontend::nbd::serve`): the fuzzer is
//! the NBD client, over an in-memory duplex, in front of a small in-memory
//! export.
//!
//! The first input byte chooses the export (size up to 64 KiB, read-only
//! or not, flush and trim offered or not) and whether the rest is sent as
//! raw bytes or built from a script: client flags, then options
//! (EXPORT_NAME, ABORT, LIST, STARTTLS, INFO, GO, STRUCTURED_REPLY,
//! LIST/SET_META_CONTEXT, unknown; well-formed or not, with any data and
//! export names), then transmission requests (READ, WRITE with its data,
//! DISC, FLUSH, TRIM, CACHE, WRITE_ZEROES, BLOCK_STATUS, unknown; any
//! command flags; offsets and lengths near the export's end or anywhere,
//! a bad magic now and then). The client then closes its side. The
//! export's block status answers are themselves scripted (empty, zero
//! lengths, too long), as a backend could send them.
//!
//! Asserted: no panic; the export is only ever called with ranges inside
//! its size (the server checks every request before calling it, as its
//! `Export` trait promises) and never written when read-only; `serve`
//! returns once the client has closed (a hang would be a libFuzzer
//! timeout); what the server writes starts with the NBD greeting;
//! FAST_ZERO reaches the export only when it was advertised.
#![no_main]

use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use futures::FutureExt;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xenring_frontend::nbd::proto::*;
use xenring_frontend::nbd::{serve, Errno, Export, ExportInfo, Extent, Zeroes};

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

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    fn take(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// An in-memory export that checks the server's promises.
struct Mem {
    info: ExportInfo,
    data: Mutex<Vec<u8>>,
    /// How block status answers: 0 well, 1 nothing, 2 zero lengths,
    /// 3 more than asked.
    status_mode: u8,
}

impl Mem {
    fn range(&self, offset: u64, len: u64) -> std::ops::Range<usize> {
        let end = offset.checked_add(len).expect("range overflows");
        assert!(end <= self.info.size, "export called past its end");
        offset as usize..end as usize
    }
}

impl Export for Mem {
    fn info(&self) -> BoxFuture<'_, Result<ExportInfo, Errno>> {
        async move { Ok(self.info) }.boxed()
    }

    fn read(&self, offset: u64, len: usize) -> BoxFuture<'_, Result<Vec<u8>, Errno>> {
        let r = self.range(offset, len as u64);
        let out = self.data.lock().expect("lock")[r].to_vec();
        async move { Ok(out) }.boxed()
    }

    fn write(&self, offset: u64, data: Vec<u8>) -> BoxFuture<'_, Result<(), Errno>> {
        assert!(!self.info.readonly, "write to a read-only export");
        let r = self.range(offset, data.len() as u64);
        self.data.lock().expect("lock")[r].copy_from_slice(&data);
        async move { Ok(()) }.boxed()
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), Errno>> {
        async move { Ok(()) }.boxed()
    }

    fn trim(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<(), Errno>> {
        assert!(!self.info.readonly, "trim of a read-only export");
        let _ = self.range(offset, len);
        async move { Ok(()) }.boxed()
    }

    fn write_zeroes(&self, offset: u64, len: u64, how: Zeroes) -> BoxFuture<'_, Result<(), Errno>> {
        assert!(!self.info.readonly, "write to a read-only export");
        assert!(!how.fast || self.info.fast_zero, "FAST_ZERO not advertised");
        let r = self.range(offset, len);
        if how.fast && offset % 2 == 1 {
            // Cannot be fast here: refused, nothing written.
            return async move { Err(ENOTSUP) }.boxed();
        }
        self.data.lock().expect("lock")[r].fill(0);
        async move { Ok(()) }.boxed()
    }

    fn block_status(&self, offset: u64, len: u32) -> BoxFuture<'_, Result<Vec<Extent>, Errno>> {
        let _ = self.range(offset, u64::from(len));
        let ext = match self.status_mode {
            0 => vec![
                Extent {
                    length: len / 2 + 1,
                    flags: STATE_HOLE | STATE_ZERO,
                },
                Extent {
                    length: len - len / 2 - 1,
                    flags: 0,
                },
            ],
            1 => Vec::new(),
            2 => vec![
                Extent {
                    length: 0,
                    flags: 0
                };
                3
            ],
            _ => vec![
                Extent {
                    length: u32::MAX,
                    flags: 1
                };
                2000
            ],
        };
        async move { Ok(ext) }.boxed()
    }

    fn cache(&self, offset: u64, len: u32) -> BoxFuture<'_, Result<(), Errno>> {
        let _ = self.range(offset, u64::from(len));
        async move { Ok(()) }.boxed()
    }
}

fn option(out: &mut Vec<u8>, opt: u32, data: &[u8]) {
    out.extend_from_slice(&IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&opt.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

/// The client's bytes, built from the script.
fn client_bytes(s: &mut Script<'_>, size: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let cflags = match s.byte() % 4 {
        0 => FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES,
        1 => FLAG_C_FIXED_NEWSTYLE,
        2 => 0,
        _ => u32::from(s.byte()),
    };
    out.extend_from_slice(&cflags.to_be_bytes());
    // Options until one starts the transmission (or the script ends).
    loop {
        let op = s.byte();
        let opt = match op % 16 {
            0 => OPT_EXPORT_NAME,
            1 => OPT_ABORT,
            2 => OPT_LIST,
            3 => OPT_STARTTLS,
            4 => OPT_INFO,
            5 | 6 | 13 => OPT_GO,
            7 | 8 => OPT_STRUCTURED_REPLY,
            9 => OPT_LIST_META_CONTEXT,
            10 | 11 => OPT_SET_META_CONTEXT,
            _ => u32::from(s.byte()),
        };
        let data: Vec<u8> = if (opt == OPT_INFO || opt == OPT_GO) && op & 0x80 == 0 {
            // Well-formed: name, then the information items asked for.
            let name_len = usize::from(s.byte() % 8);
            let mut d = (name_len as u32).to_be_bytes().to_vec();
            d.extend_from_slice(s.take(name_len));
            let n = s.byte() % 4;
            d.extend_from_slice(&u16::from(n).to_be_bytes());
            for _ in 0..n {
                d.extend_from_slice(&u16::from(s.byte() % 4).to_be_bytes());
            }
            d
        } else if (opt == OPT_LIST_META_CONTEXT || opt == OPT_SET_META_CONTEXT) && op & 0x80 == 0 {
            // Well-formed: name (usually the default), then queries.
            let name: &[u8] = if s.byte() % 8 == 0 { b"other" } else { b"" };
            let mut d = (name.len() as u32).to_be_bytes().to_vec();
            d.extend_from_slice(name);
            let n = s.byte() % 4;
            d.extend_from_slice(&u32::from(n).to_be_bytes());
            for _ in 0..n {
                let q: &[u8] = match s.byte() % 4 {
                    0 | 1 => b"base:allocation",
                    2 => b"base:",
                    _ => b"x-none:thing",
                };
                d.extend_from_slice(&(q.len() as u32).to_be_bytes());
                d.extend_from_slice(q);
            }
            d
        } else if (opt == OPT_LIST || opt == OPT_STRUCTURED_REPLY) && op & 0x80 == 0 {
            Vec::new()
        } else {
            let n = usize::from(s.byte() % 64);
            s.take(n).to_vec()
        };
        if op & 0x40 != 0 {
            // A broken option header.
            out.extend_from_slice(s.take(12));
        } else {
            option(&mut out, opt, &data);
        }
        if matches!(opt, OPT_EXPORT_NAME | OPT_GO | OPT_ABORT) || s.is_empty() {
            break;
        }
    }
    // Transmission requests.
    while !s.is_empty() {
        let op = s.byte();
        let kind = match op % 12 {
            0 | 1 => CMD_READ,
            2 | 3 => CMD_WRITE,
            4 => CMD_FLUSH,
            5 => CMD_TRIM,
            6 | 8 => CMD_WRITE_ZEROES,
            9 | 10 => CMD_BLOCK_STATUS,
            11 => CMD_CACHE,
            _ => {
                if op & 0x80 != 0 {
                    CMD_DISC
                } else {
                    u16::from(s.byte())
                }
            }
        };
        let offset = match s.byte() % 4 {
            0 => u64::from(s.u16()),
            1 => size.wrapping_sub(u64::from(s.byte())),
            2 => u64::MAX - u64::from(s.byte()),
            _ => size + u64::from(s.byte()),
        };
        let length = match s.byte() % 4 {
            0 => u32::from(s.u16()),
            1 => u32::from(s.byte()),
            2 => u32::MAX - u32::from(s.byte()),
            _ => (32 << 20) + 1,
        };
        let req = Request {
            flags: match s.byte() % 4 {
                0 => 0,
                1 => u16::from(s.byte() % 32),
                2 => CMD_FLAG_FUA,
                _ => s.u16(),
            },
            kind,
            handle: u64::from(op),
            offset,
            length,
        };
        let mut head = req.encode();
        if op & 0x40 != 0 && s.byte() == 0 {
            head[0] ^= 1; // a bad magic
        }
        out.extend_from_slice(&head);
        if kind == CMD_WRITE {
            // The data, or less of it (the client closes mid-request).
            let n = (length as usize).min(4096);
            out.extend_from_slice(&vec![op; n]);
        }
    }
    out
}

async fn session(data: &[u8]) {
    let mut s = Script(data);
    let mode = s.byte();
    let size = u64::from(s.u16());
    let info = ExportInfo {
        size,
        readonly: mode & 2 != 0,
        flush: mode & 4 != 0,
        trim: mode & 8 != 0,
        fast_zero: mode & 16 != 0,
    };
    let export = Arc::new(Mem {
        info,
        data: Mutex::new(vec![0u8; size as usize]),
        status_mode: (mode >> 5) % 4,
    });
    let bytes = if mode & 1 == 0 {
        client_bytes(&mut s, size)
    } else {
        s.0.to_vec()
    };
    let (client, server) = tokio::io::duplex(1 << 16);
    let (mut rd, mut wr) = tokio::io::split(client);
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if got.len() < 16 {
                        got.extend_from_slice(&buf[..n]);
                    }
                }
            }
        }
        got
    });
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&bytes).await;
        let _ = wr.shutdown().await;
        // Keep the write half until the server is done with the stream.
        wr
    });
    let _ = serve(server, export).await;
    let got = reader.await.expect("reader");
    let _ = writer.await.expect("writer");
    if got.len() >= 8 {
        assert_eq!(got[..8], NBDMAGIC.to_be_bytes(), "the greeting first");
    }
}

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(session(data));
});
