//! Fuzzes the chan wire format ([`xenring::chan::frame`]) and the
//! multiplexer ([`Mux`]) with a hostile peer.
//!
//! Part one, the decoder: the input (after its first byte) is a byte
//! stream, fed to [`decode`] whole and again in chunks whose sizes come
//! from the input. Asserted: no panic; an incomplete frame consumes
//! nothing and an error consumes nothing; every accepted frame re-encodes
//! to exactly the bytes it was decoded from (the format has no slack:
//! flags, reserved bits and the HELLO's reserved byte must be zero, every
//! length is exact); chunked decoding gives the same frames and the same
//! verdict as whole decoding; [`decode_eof`] on what is left is `None`
//! only when nothing is left.
//!
//! Part two, the multiplexer (when the first byte's low bit is set): a
//! [`Mux`] runs on a current-thread tokio runtime over an in-memory
//! duplex; the fuzzer is its peer. It sends a HELLO (role and window from
//! the input), then frames built from the script (OPEN, OPEN_OK, DATA,
//! CREDIT, EOF, RESET on small channel ids, or raw bytes), while the local
//! side accepts channels, reads, writes, shuts down and opens its own.
//! Asserted: no panic; every byte the mux writes decodes as valid frames,
//! starting with its HELLO; no DATA from the mux on a channel exceeds the
//! window the fuzzer granted (HELLO window plus CREDITs); a channel never
//! reads more bytes than the fuzzer sent on it; the mux ends (its
//! `closed()` returns) once the fuzzer closes the stream.
#![no_main]

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xenring::chan::frame::{decode, decode_eof, Frame, Hello, HEADER_SIZE};
use xenring::chan::{Channel, Mux, MuxConfig, Role};

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

/// Decodes `input` as one stream, fed in pieces of the sizes `chunks`
/// yields (the whole input at once when it is empty). Returns the frames,
/// whether decoding stopped on an error, and what was left.
fn decode_all(input: &[u8], chunks: &[u8]) -> (Vec<Frame>, bool, BytesMut) {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut rest = input;
    let mut sizes = chunks.iter().cycle();
    while !rest.is_empty() {
        let n = if chunks.is_empty() {
            rest.len()
        } else {
            usize::from(*sizes.next().expect("cycle"))
                .max(1)
                .min(rest.len())
        };
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        loop {
            let before = buf.clone();
            match decode(&mut buf) {
                Ok(Some(f)) => {
                    let used = before.len() - buf.len();
                    let mut again = BytesMut::new();
                    f.encode(&mut again).expect("a decoded frame encodes");
                    assert_eq!(&again[..], &before[..used], "re-encodes to its bytes");
                    assert_eq!(f.encoded_len(), used);
                    assert!(used >= HEADER_SIZE);
                    frames.push(f);
                }
                Ok(None) => {
                    assert_eq!(buf, before, "an incomplete frame consumes nothing");
                    break;
                }
                Err(_) => {
                    assert_eq!(buf, before, "an error consumes nothing");
                    return (frames, true, buf);
                }
            }
        }
    }
    (frames, false, buf)
}

fn decoder(data: &[u8]) {
    let split = usize::from(data.first().copied().unwrap_or(0)) % 8;
    let (chunks, stream) = data.split_at(split.min(data.len()));
    let (whole, whole_err, mut left) = decode_all(stream, &[]);
    let (parts, parts_err, _) = decode_all(stream, chunks);
    assert_eq!(whole_err, parts_err, "chunking does not change the verdict");
    assert_eq!(whole, parts, "chunking does not change the frames");
    if !whole_err {
        match decode_eof(&mut left) {
            Ok(None) => assert!(left.is_empty()),
            Ok(Some(_)) => panic!("decode left a complete frame"),
            Err(_) => {}
        }
    }
}

/// What the mux sent on each channel and what the fuzzer granted.
#[derive(Default)]
struct PeerView {
    buf: BytesMut,
    hello: bool,
    window: u64,
    sent: HashMap<u32, u64>,
    credit: HashMap<u32, u64>,
}

impl PeerView {
    /// Decodes what the mux wrote and checks it.
    fn absorb(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        loop {
            match decode(&mut self.buf) {
                Ok(Some(f)) => {
                    if !self.hello {
                        assert!(
                            matches!(f, Frame::Hello(_)),
                            "mux speaks HELLO first: {f:?}"
                        );
                        self.hello = true;
                        continue;
                    }
                    assert!(!matches!(f, Frame::Hello(_)), "one HELLO only");
                    if let Frame::Data { channel, payload } = &f {
                        let sent = self.sent.entry(*channel).or_default();
                        *sent += payload.len() as u64;
                        let granted = self.window + self.credit.get(channel).copied().unwrap_or(0);
                        assert!(
                            *sent <= granted,
                            "mux sent {sent} > window {granted} on {channel}"
                        );
                    }
                }
                Ok(None) => break,
                Err(e) => panic!("mux wrote a bad frame: {e}"),
            }
        }
    }
}

async fn read_some(ch: &mut Channel, buf: &mut [u8]) -> usize {
    // A channel read with nothing ready would wait; poll it once.
    match futures::poll!(Box::pin(ch.read(buf))) {
        std::task::Poll::Ready(Ok(n)) => n,
        _ => 0,
    }
}

async fn mux_session(mut s: Script<'_>) {
    let (local, mut peer) = tokio::io::duplex(1 << 16);
    let role = if s.byte() & 1 == 0 {
        Role::Client
    } else {
        Role::Server
    };
    let mut cfg = MuxConfig::new(role);
    cfg.window = 1 + u32::from(s.byte()) * 64;
    cfg.accept_backlog = 1 + usize::from(s.byte() % 4);
    cfg.max_channels = 1 + usize::from(s.byte() % 8);
    let (handle, mut incoming) = Mux::start(local, cfg);
    let peer_role = if s.byte() & 1 == 0 {
        role
    } else {
        match role {
            Role::Client => Role::Server,
            Role::Server => Role::Client,
        }
    };
    let mut view = PeerView {
        window: 1 + u64::from(s.byte()) * 16,
        ..PeerView::default()
    };
    let mut out = BytesMut::new();
    Frame::Hello(Hello {
        role: peer_role,
        window: view.window as u32,
    })
    .encode(&mut out)
    .expect("hello");
    let mut channels: Vec<Channel> = Vec::new();
    let mut received: HashMap<u32, u64> = HashMap::new();
    let mut fed: HashMap<u32, u64> = HashMap::new();
    let mut rbuf = vec![0u8; 4096];
    while !s.is_empty() {
        let op = s.byte();
        let id = u32::from(s.byte() % 8);
        let frame = match op % 12 {
            0 => Some(Frame::Open(id)),
            1 => Some(Frame::OpenOk(id)),
            2 | 3 => {
                let n = usize::from(s.byte()) * 4 + 1;
                let payload = Bytes::copy_from_slice(s.take(n));
                if payload.is_empty() {
                    None
                } else {
                    *fed.entry(id).or_default() += payload.len() as u64;
                    Some(Frame::Data {
                        channel: id,
                        payload,
                    })
                }
            }
            4 => {
                let inc = 1 + u32::from(s.byte()) * 32;
                *view.credit.entry(id).or_default() += u64::from(inc);
                Some(Frame::Credit {
                    channel: id,
                    increment: inc,
                })
            }
            5 => Some(Frame::Eof(id)),
            6 => Some(Frame::reset(id, "fuzz")),
            7 => {
                let n = usize::from(s.byte() % 32);
                out.extend_from_slice(s.take(n));
                None
            }
            8 => {
                if let std::task::Poll::Ready(Some(ch)) =
                    futures::poll!(Box::pin(incoming.accept()))
                {
                    channels.push(ch);
                }
                None
            }
            9 => {
                let i = usize::from(s.byte());
                if !channels.is_empty() {
                    let k = i % channels.len();
                    let n = read_some(&mut channels[k], &mut rbuf).await;
                    let id = channels[k].id();
                    let got = received.entry(id).or_default();
                    *got += n as u64;
                    assert!(
                        *got <= fed.get(&id).copied().unwrap_or(0),
                        "channel {id} read more than the peer sent"
                    );
                }
                None
            }
            10 => {
                let i = usize::from(s.byte());
                if !channels.is_empty() {
                    let k = i % channels.len();
                    let n = usize::from(s.byte()) * 8;
                    let data = vec![op; n];
                    let _ = futures::poll!(Box::pin(channels[k].write(&data)));
                    if op & 0x80 != 0 {
                        let _ = futures::poll!(Box::pin(channels[k].shutdown()));
                    }
                    if op & 0x40 != 0 {
                        let ch = channels.swap_remove(k);
                        drop(ch);
                    }
                }
                None
            }
            _ => {
                if let std::task::Poll::Ready(Ok(ch)) = futures::poll!(Box::pin(handle.open())) {
                    channels.push(ch);
                }
                None
            }
        };
        if let Some(f) = frame {
            let _ = f.encode(&mut out);
        }
        if !out.is_empty() {
            if peer.write_all(&out).await.is_err() {
                break;
            }
            out.clear();
        }
        // Let the driver run, and collect what it wrote.
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        let mut got = BytesMut::new();
        while let std::task::Poll::Ready(Ok(n)) = futures::poll!(Box::pin(peer.read_buf(&mut got)))
        {
            if n == 0 {
                break;
            }
        }
        view.absorb(&got);
    }
    // The peer goes away: the mux must end.
    drop(peer);
    drop(channels);
    drop(incoming);
    let _ = handle.closed().await;
}

fuzz_target!(|data: &[u8]| {
    let mode = data.first().copied().unwrap_or(0);
    if mode & 1 == 0 {
        decoder(&data[1.min(data.len())..]);
    } else {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(mux_session(Script(&data[1..])));
    }
});
