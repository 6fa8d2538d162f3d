//! Fuzzes the xenbus relay ([`XenbusBridge`]): the framing of what a
//! client sends over the Unix socket into one `write()` per message, the
//! bookkeeping of replies owed (a WATCH or UNWATCH waits until every
//! earlier reply is read back), and the copy of the device's byte stream
//! back to the client.
//!
//! The device is a FIFO opened read-write, so it echoes: every message
//! the relay writes comes back as its "reply", in pieces of whatever size
//! the pipe gives. The fuzzer is the client: messages of any type (but
//! `WATCH_EVENT`, which a real xenstored answers and an echo would not),
//! ids and payloads of up to 4080 bytes (so that header and payload fit in
//! the pipe's atomic write size), written in chunks of any size,
//! and now and then a header announcing more than 4096 bytes.
//!
//! Asserted: no panic; without an oversized header the client reads back
//! exactly the bytes of the messages it sent, in order (nothing lost,
//! split or reordered by the framing), including after WATCH and UNWATCH
//! (which wait for the earlier echoes); after an oversized header the
//! relay closes the connection and what came back is a prefix of the
//! messages before it. A hang (a lost wake-up) would be a libFuzzer
//! timeout.
#![no_main]

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use xenring::xenstore::codec::XsType;
use xenring::xenstore::xenbus_dev::XenbusBridge;

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

/// The largest payload sent: header and payload fit in PIPE_BUF.
const MAX_ECHO: usize = 4096 - 16;

static FIFO: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn remove_fifo() {
    if let Some(p) = FIFO.get() {
        let _ = std::fs::remove_file(p);
    }
}

/// The echoing "device": one FIFO per fuzzing process, removed at exit.
fn fifo() -> &'static PathBuf {
    FIFO.get_or_init(|| {
        let p = std::env::temp_dir().join(format!("xenbus-relay-fuzz-{}", std::process::id()));
        let c = CString::new(p.as_os_str().as_bytes()).expect("path");
        let _ = std::fs::remove_file(&p);
        // SAFETY: a valid NUL-terminated path; atexit takes a plain fn.
        unsafe {
            assert_eq!(libc::mkfifo(c.as_ptr(), 0o600), 0, "mkfifo");
            libc::atexit(remove_fifo);
        }
        p
    })
}

fn header(ty: u32, req_id: u32, tx_id: u32, len: u32) -> [u8; 16] {
    let mut h = [0u8; 16];
    for (i, v) in [ty, req_id, tx_id, len].into_iter().enumerate() {
        h[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
    }
    h
}

async fn session(mut s: Script<'_>) {
    // The messages, and the echo expected.
    let mut wire = Vec::new();
    let mut oversized = false;
    while !s.is_empty() {
        let op = s.byte();
        if op == 0xff {
            let len = 4097 + u32::from(s.u16());
            wire.extend_from_slice(&header(2, 1, 0, len));
            oversized = true;
            break;
        }
        let ty = match op % 8 {
            0 => XsType::Watch.raw(),
            1 => XsType::Unwatch.raw(),
            _ => match u32::from(s.byte()) % 32 {
                15 => XsType::Read.raw(),
                t => t,
            },
        };
        // At most PIPE_BUF (4096) bytes with the header: a FIFO takes such
        // a write whole or not at all, as the device does; a longer one
        // it may take in part, which the device never does.
        let len = match s.byte() % 4 {
            0 => 0,
            1 => usize::from(s.byte()),
            2 => usize::from(s.u16()) % (MAX_ECHO + 1),
            _ => MAX_ECHO,
        };
        let payload = s.take(len).to_vec();
        wire.extend_from_slice(&header(ty, u32::from(op), 0, payload.len() as u32));
        wire.extend_from_slice(&payload);
    }
    let expect_len = if oversized {
        wire.len() - 16
    } else {
        wire.len()
    };
    let chunk = 1 + usize::from(s.byte()) * 64;

    let bridge = XenbusBridge::start(fifo()).await.expect("bridge");
    let sock = UnixStream::connect(bridge.path()).await.expect("connect");
    let (mut rd, mut wr) = sock.into_split();
    let reader = async {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 1 << 14];
        while got.len() < expect_len || oversized {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        got
    };
    let writer = async {
        for piece in wire.chunks(chunk) {
            if wr.write_all(piece).await.is_err() {
                break;
            }
        }
        wr
    };
    let (got, wr) = futures::join!(reader, writer);
    drop(wr);
    assert!(got.len() <= expect_len, "more came back than was sent");
    assert_eq!(
        got[..],
        wire[..got.len()],
        "the echo is the messages, in order"
    );
    if !oversized {
        assert_eq!(got.len(), expect_len, "every message came back");
    }
    drop(bridge);
}

/// One runtime for the whole run: building one per input (and its
/// blocking threads) cost more than the session itself.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    runtime().block_on(session(Script(data)));
});
