//! The multiplexer over `tokio::io::duplex`: two muxes, or one mux and a
//! raw peer that speaks frames by hand (to break the rules, or to check
//! that the mux keeps them). Timeouts are only hang guards; nothing here
//! asserts on timing.

use std::future::Future;
use std::io::ErrorKind;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::time::timeout;

use super::frame::{decode, Frame, Hello, CONNECTION, PROTOCOL_VERSION};
use super::*;

const HANG: Duration = Duration::from_secs(60);

/// Bounds a wait that must end; a hang fails the test instead of stalling it.
pub(super) async fn guard<F: Future>(f: F) -> F::Output {
    timeout(HANG, f).await.expect("hang guard: the test hung")
}

/// Deterministic bytes, different for every seed.
pub(super) fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Writes `send` then EOF while reading to EOF and checking the bytes
/// are `expect`; both directions at once.
pub(super) async fn exchange(ch: Channel, send: Vec<u8>, expect: Vec<u8>) {
    let id = ch.id();
    let (mut r, mut w) = tokio::io::split(ch);
    let writer = async move {
        w.write_all(&send).await.unwrap();
        w.shutdown().await.unwrap();
        w
    };
    let reader = async move {
        let mut got = Vec::with_capacity(expect.len());
        r.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), expect.len(), "channel {id}: length");
        assert!(got == expect, "channel {id}: bytes differ");
        r
    };
    let (w, r) = tokio::join!(writer, reader);
    drop(r.unsplit(w));
}

type End = (MuxHandle, Incoming);

fn pair_with(client: MuxConfig, server: MuxConfig) -> (End, End) {
    let (a, b) = tokio::io::duplex(256 * 1024);
    (Mux::start(a, client), Mux::start(b, server))
}

fn pair() -> (End, End) {
    pair_with(MuxConfig::new(Role::Client), MuxConfig::new(Role::Server))
}

/// A peer that speaks frames by hand.
struct Raw {
    io: DuplexStream,
    buf: BytesMut,
}

impl Raw {
    /// A mux with `cfg` and the raw peer on the other end of the stream.
    fn start(cfg: MuxConfig) -> (End, Raw) {
        let (a, b) = tokio::io::duplex(256 * 1024);
        (
            Mux::start(a, cfg),
            Raw {
                io: b,
                buf: BytesMut::new(),
            },
        )
    }

    async fn send(&mut self, f: Frame) {
        let mut b = BytesMut::new();
        f.encode(&mut b).unwrap();
        self.io.write_all(&b).await.unwrap();
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.unwrap();
    }

    /// The next frame, or `None` at the end of the stream.
    async fn recv(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) = decode(&mut self.buf).unwrap() {
                return Some(f);
            }
            match self.io.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Sends our HELLO and checks the mux's.
    async fn hello(&mut self, role: Role, window: u32) -> Hello {
        self.send(Frame::Hello(Hello { role, window })).await;
        match guard(self.recv()).await {
            Some(Frame::Hello(h)) => h,
            other => panic!("expected HELLO, got {other:?}"),
        }
    }

    /// Reads to the end of the stream; the reason of a connection RESET
    /// on the way, if any.
    async fn drain(&mut self) -> Option<String> {
        let mut reason = None;
        while let Some(f) = guard(self.recv()).await {
            if let Frame::Reset {
                channel: CONNECTION,
                reason: r,
            } = f
            {
                reason = Some(r);
            }
        }
        reason
    }

    /// Reads until a connection RESET and the end of the stream.
    async fn expect_abort(&mut self) -> String {
        self.drain()
            .await
            .expect("a connection RESET before the end")
    }
}

fn is_reset_with(e: &std::io::Error, needle: &str) -> bool {
    e.kind() == ErrorKind::ConnectionReset && e.to_string().contains(needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_channels_move_a_mebibyte_each_way() {
    const N: usize = 64;
    const LEN: usize = 1 << 20;
    let ((ch, _ci), (sh, mut si)) = pair();
    let server = tokio::spawn(async move {
        let mut tasks = Vec::new();
        for _ in 0..N {
            let c = guard(si.accept()).await.unwrap();
            let id = u64::from(c.id());
            tasks.push(tokio::spawn(exchange(
                c,
                pattern(2 * id + 1, LEN),
                pattern(2 * id, LEN),
            )));
        }
        for t in tasks {
            t.await.unwrap();
        }
        si
    });
    let mut tasks = Vec::new();
    for _ in 0..N {
        let h = ch.clone();
        tasks.push(tokio::spawn(async move {
            let c = h.open().await.unwrap();
            let id = u64::from(c.id());
            exchange(c, pattern(2 * id, LEN), pattern(2 * id + 1, LEN)).await;
        }));
    }
    for t in tasks {
        guard(t).await.unwrap();
    }
    let _si = guard(server).await.unwrap();
    let (c, s) = (ch.stats(), sh.stats());
    let total = (N * LEN) as u64;
    assert_eq!((c.bytes_sent, c.bytes_received), (total, total), "{c:?}");
    assert_eq!((s.bytes_sent, s.bytes_received), (total, total), "{s:?}");
    assert_eq!((c.channels_total, s.channels_total), (N as u64, N as u64));
    assert_eq!((c.channels_open, s.channels_open), (0, 0));
    assert_eq!((c.resets_sent, c.resets_received), (0, 0), "clean closes");
    assert_eq!((s.resets_sent, s.resets_received), (0, 0), "clean closes");
    assert!(ch.error().is_none() && sh.error().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_does_not_block_other_channels() {
    let ((ch, _ci), (_sh, mut si)) = pair();
    // Channel 1: the client writes 1 MiB; the server does not read it.
    let mut stalled = guard(ch.open()).await.unwrap();
    let mut stalled_peer = guard(si.accept()).await.unwrap();
    let big = pattern(99, 1 << 20);
    let sent = big.clone();
    let writer = tokio::spawn(async move {
        stalled.write_all(&sent).await.unwrap();
        stalled.shutdown().await.unwrap();
        stalled
    });
    // Meanwhile eight other channels complete, both ways.
    let server = tokio::spawn(async move {
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let c = si.accept().await.unwrap();
            let id = u64::from(c.id());
            tasks.push(tokio::spawn(exchange(
                c,
                pattern(id + 1000, 300_000),
                pattern(id, 300_000),
            )));
        }
        for t in tasks {
            t.await.unwrap();
        }
        si
    });
    for _ in 0..8 {
        let c = guard(ch.open()).await.unwrap();
        let id = u64::from(c.id());
        guard(exchange(
            c,
            pattern(id, 300_000),
            pattern(id + 1000, 300_000),
        ))
        .await;
    }
    let _si = guard(server).await.unwrap();
    // The stalled writer cannot be done: at most the window plus its
    // local buffer fit before the reader reads.
    assert!(!writer.is_finished());
    let mut got = Vec::new();
    guard(stalled_peer.read_to_end(&mut got)).await.unwrap();
    assert!(got == big, "stalled channel's bytes differ");
    let stalled = guard(writer).await.unwrap();
    drop((stalled, stalled_peer));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_in_both_directions() {
    let ((ch, _ci), (_sh, mut si)) = pair();
    // The opener closes first; the acceptor still answers after EOF.
    let mut a = guard(ch.open()).await.unwrap();
    let mut b = guard(si.accept()).await.unwrap();
    a.write_all(b"ping").await.unwrap();
    guard(a.shutdown()).await.unwrap();
    let mut got = Vec::new();
    guard(b.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"ping");
    assert_eq!(b.read(&mut [0u8; 4]).await.unwrap(), 0, "EOF stays");
    let err = a.write(b"x").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BrokenPipe);
    b.write_all(b"pong after your EOF").await.unwrap();
    guard(b.shutdown()).await.unwrap();
    got.clear();
    guard(a.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"pong after your EOF");
    drop((a, b));

    // The acceptor closes first.
    let mut a = guard(ch.open()).await.unwrap();
    let mut b = guard(si.accept()).await.unwrap();
    b.write_all(b"hello").await.unwrap();
    guard(b.shutdown()).await.unwrap();
    got.clear();
    guard(a.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"hello");
    a.write_all(b"bye").await.unwrap();
    guard(a.shutdown()).await.unwrap();
    got.clear();
    guard(b.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"bye");
    drop((a, b));
    let s = ch.stats();
    assert_eq!(
        (s.channels_open, s.resets_sent, s.resets_received),
        (0, 0, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_reaches_the_peer_and_spares_the_others() {
    let ((ch, _ci), (_sh, mut si)) = pair();
    let mut doomed = guard(ch.open()).await.unwrap();
    let peer = guard(si.accept()).await.unwrap();
    let other = guard(ch.open()).await.unwrap();
    let other_peer = guard(si.accept()).await.unwrap();
    peer.reset("connect to tcp:127.0.0.1:9: Connection refused");
    let err = guard(doomed.read(&mut [0u8; 16])).await.unwrap_err();
    assert!(
        is_reset_with(&err, "tcp:127.0.0.1:9: Connection refused"),
        "{err}"
    );
    let inner = err.get_ref().unwrap().downcast_ref::<ChanError>().unwrap();
    assert!(
        matches!(inner, ChanError::Reset { channel: 1, .. }),
        "{inner:?}"
    );
    let err = doomed.write(b"x").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionReset);
    drop(doomed);
    guard(async {
        tokio::join!(
            exchange(other, b"still".to_vec(), b"fine".to_vec()),
            exchange(other_peer, b"fine".to_vec(), b"still".to_vec()),
        )
    })
    .await;
    assert!(ch.error().is_none());
    assert_eq!(ch.stats().resets_received, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_sent_before_a_reset_is_read_first() {
    let ((ch, _ci), (_sh, mut si)) = pair();
    let mut a = guard(ch.open()).await.unwrap();
    let mut b = guard(si.accept()).await.unwrap();
    b.write_all(b"partial answer").await.unwrap();
    guard(b.flush()).await.unwrap();
    b.reset("target went away");
    let mut got = [0u8; 14];
    guard(a.read_exact(&mut got)).await.unwrap();
    assert_eq!(&got, b"partial answer");
    let err = guard(a.read(&mut [0u8; 1])).await.unwrap_err();
    assert!(is_reset_with(&err, "target went away"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_without_shutdown_resets_and_after_shutdown_flushes() {
    let ((ch, _ci), (_sh, mut si)) = pair();
    // Dropped mid-stream: the peer sees a RESET.
    let mut a = guard(ch.open()).await.unwrap();
    let mut b = guard(si.accept()).await.unwrap();
    a.write_all(b"abc").await.unwrap();
    drop(a);
    let mut buf = Vec::new();
    let err = guard(b.read_to_end(&mut buf)).await.unwrap_err();
    assert!(is_reset_with(&err, "dropped before shutdown"), "{err}");
    drop(b);

    // Shut down, then dropped before the peer's EOF: our bytes and EOF
    // arrive, then the peer's writes fail.
    let mut a = guard(ch.open()).await.unwrap();
    let mut b = guard(si.accept()).await.unwrap();
    let data = pattern(5, 500_000);
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        a.write_all(&sent).await.unwrap();
        a.shutdown().await.unwrap();
        drop(a);
    });
    buf.clear();
    guard(b.read_to_end(&mut buf)).await.unwrap();
    assert!(buf == data);
    guard(writer).await.unwrap();
    let err = guard(async {
        loop {
            if let Err(e) = b.write_all(&[0u8; 1024]).await {
                return e;
            }
        }
    })
    .await;
    assert!(is_reset_with(&err, "closed before the peer's EOF"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_ends_open_at_once() {
    let ((ch, ci), (sh, si)) = pair();
    const N: usize = 16;
    let accept = |mut inc: Incoming| {
        tokio::spawn(async move {
            let mut ids = Vec::new();
            let mut tasks = Vec::new();
            for _ in 0..N {
                let c = inc.accept().await.unwrap();
                let id = u64::from(c.id());
                ids.push(c.id());
                tasks.push(tokio::spawn(exchange(
                    c,
                    pattern(id + 1, 70_000),
                    pattern(id, 70_000),
                )));
            }
            for t in tasks {
                t.await.unwrap();
            }
            (inc, ids)
        })
    };
    let open = |h: MuxHandle| {
        tokio::spawn(async move {
            let mut tasks = Vec::new();
            for _ in 0..N {
                let h = h.clone();
                tasks.push(tokio::spawn(async move {
                    let c = h.open().await.unwrap();
                    let id = c.id();
                    exchange(
                        c,
                        pattern(u64::from(id), 70_000),
                        pattern(u64::from(id) + 1, 70_000),
                    )
                    .await;
                    id
                }));
            }
            let mut ids = Vec::new();
            for t in tasks {
                ids.push(t.await.unwrap());
            }
            ids
        })
    };
    let (from_client, from_server) = (open(ch.clone()), open(sh.clone()));
    let (at_server, at_client) = (accept(si), accept(ci));
    let mut opened_c = guard(from_client).await.unwrap();
    let mut opened_s = guard(from_server).await.unwrap();
    let (_si, mut seen_s) = guard(at_server).await.unwrap();
    let (_ci, mut seen_c) = guard(at_client).await.unwrap();
    for v in [&mut opened_c, &mut opened_s, &mut seen_s, &mut seen_c] {
        v.sort_unstable();
    }
    assert!(opened_c.iter().all(|id| id % 2 == 1), "{opened_c:?}");
    assert!(opened_s.iter().all(|id| id % 2 == 0), "{opened_s:?}");
    assert_eq!(opened_c, seen_s);
    assert_eq!(opened_s, seen_c);
    assert_eq!(ch.stats().channels_total, 2 * N as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_every_handle_shuts_the_connection_down() {
    let ((ch, ci), (sh, mut si)) = pair();
    // A channel keeps the mux alive after its handle and Incoming go.
    let mut a = guard(ch.open()).await.unwrap();
    let mut b = guard(si.accept()).await.unwrap();
    drop((ch, ci));
    a.write_all(b"still here").await.unwrap();
    guard(a.shutdown()).await.unwrap();
    let mut got = Vec::new();
    guard(b.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"still here");
    b.shutdown().await.unwrap();
    assert_eq!(guard(a.read(&mut [0u8; 1])).await.unwrap(), 0);
    // The last user of the client end goes: its driver closes the stream,
    // and the server end, with nothing open, ends in order.
    drop(a);
    drop(b);
    assert!(guard(sh.closed()).await.is_ok());
    assert!(sh.error().is_none());
    assert!(matches!(sh.open().await, Err(ChanError::Closed)));
    assert!(guard(si.accept()).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opens_are_refused_when_the_peer_does_not_accept() {
    let ((ch, _ci), (_sh, si)) = pair();
    drop(si);
    match guard(ch.open()).await {
        Err(ChanError::Reset { channel: 1, reason }) => {
            assert_eq!(reason, "not accepting channels")
        }
        other => panic!("{other:?}"),
    }
    // A full backlog refuses too.
    let mut cfg = MuxConfig::new(Role::Server);
    cfg.accept_backlog = 2;
    let ((ch, _ci), (_sh, _si)) = pair_with(MuxConfig::new(Role::Client), cfg);
    let a = guard(ch.open()).await.unwrap();
    let b = guard(ch.open()).await.unwrap();
    assert!(matches!(
        guard(ch.open()).await,
        Err(ChanError::Reset { ref reason, .. }) if reason == "accept backlog full"
    ));
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_role_on_both_ends_is_refused() {
    let ((ch, _ci), (sh, _si)) =
        pair_with(MuxConfig::new(Role::Client), MuxConfig::new(Role::Client));
    let err = guard(ch.closed()).await.unwrap_err();
    assert!(
        matches!(err, ChanError::SameRole { role: Role::Client }),
        "{err}"
    );
    assert!(guard(sh.closed()).await.is_err());
    assert!(ch.open().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_version_mismatch_is_a_clear_error() {
    let ((h, mut inc), mut raw) = Raw::start(MuxConfig::new(Role::Client));
    let mut hello = BytesMut::new();
    Frame::Hello(Hello {
        role: Role::Server,
        window: 1000,
    })
    .encode(&mut hello)
    .unwrap();
    hello[16..18].copy_from_slice(&(PROTOCOL_VERSION + 1).to_le_bytes());
    raw.send_raw(&hello).await;
    let err = guard(h.closed()).await.unwrap_err();
    assert!(
        matches!(
            err,
            ChanError::Frame(FrameError::Version { ours: 1, theirs: 2 })
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("version mismatch"), "{err}");
    assert!(matches!(
        h.open().await,
        Err(ChanError::Frame(FrameError::Version { .. }))
    ));
    assert!(guard(inc.accept()).await.is_none());
    // The peer was told why before the stream closed.
    let reason = raw.expect_abort().await;
    assert!(reason.contains("version mismatch"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_the_peer_fails_every_channel_without_hanging() {
    let ((h, mut inc), mut raw) = Raw::start(MuxConfig::new(Role::Client));
    raw.hello(Role::Server, 1 << 16).await;
    raw.send(Frame::Open(2)).await;
    raw.send(Frame::Open(4)).await;
    let mut a = guard(inc.accept()).await.unwrap();
    let mut b = guard(inc.accept()).await.unwrap();
    let h2 = h.clone();
    let opener = tokio::spawn(async move { h2.open().await.map(|c| c.id()) });
    // OPEN_OK 2, OPEN_OK 4, OPEN 1, in some order.
    let mut opened = None;
    while opened.is_none() {
        if let Some(Frame::Open(id)) = guard(raw.recv()).await {
            opened = Some(id);
        }
    }
    raw.send(Frame::OpenOk(opened.unwrap())).await;
    let c_id = guard(opener).await.unwrap().unwrap();
    assert_eq!(c_id, 1);
    // A read and a write blocked when the garbage comes.
    let blocked_read = tokio::spawn(async move {
        let mut buf = [0u8; 8];
        let r = a.read(&mut buf).await;
        (a, r)
    });
    raw.send_raw(&[0xde, 0xad, 0xbe, 0xef, 0x99, 0, 0, 0, 0, 0, 0, 0])
        .await;
    let (_a, r) = guard(blocked_read).await.unwrap();
    let err = r.unwrap_err();
    assert!(is_reset_with(&err, "unknown kind 0x99"), "{err}");
    let err = guard(b.write_all(b"anything")).await.unwrap_err();
    assert!(is_reset_with(&err, "unknown kind"), "{err}");
    assert!(guard(b.read(&mut [0u8; 1])).await.is_err());
    assert!(matches!(guard(h.closed()).await, Err(ChanError::Frame(_))));
    assert!(guard(inc.accept()).await.is_none());
    assert!(h.open().await.is_err());
    let reason = raw.expect_abort().await;
    assert!(reason.contains("unknown kind"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn violations_end_the_connection() {
    // Each case: frames after the HELLOs and an accepted OPEN 2, and the
    // words the error must contain.
    let cases: Vec<(Vec<Frame>, &str)> = vec![
        (
            vec![Frame::Data {
                channel: 2,
                payload: Bytes::from(vec![1u8; 1001]),
            }],
            "beyond the window",
        ),
        (
            vec![Frame::Data {
                channel: 8,
                payload: Bytes::from_static(b"x"),
            }],
            "never opened",
        ),
        (
            vec![Frame::Credit {
                channel: 3,
                increment: 5,
            }],
            "never opened",
        ),
        (vec![Frame::Eof(2), Frame::Eof(2)], "a second EOF"),
        (
            vec![
                Frame::Eof(2),
                Frame::Data {
                    channel: 2,
                    payload: Bytes::from_static(b"x"),
                },
            ],
            "DATA after EOF",
        ),
        (vec![Frame::Open(2)], "not above the last"),
        (vec![Frame::Open(5)], "this end's parity"),
        (
            vec![Frame::Hello(Hello {
                role: Role::Server,
                window: 1,
            })],
            "a second HELLO",
        ),
        (
            vec![Frame::Credit {
                channel: 2,
                increment: u32::MAX,
            }],
            "overflows the window",
        ),
        (vec![Frame::reset(CONNECTION, "bye now")], "bye now"),
    ];
    for (frames, needle) in cases {
        let mut cfg = MuxConfig::new(Role::Client);
        cfg.window = 1000;
        let ((h, mut inc), mut raw) = Raw::start(cfg);
        let their = raw.hello(Role::Server, 1 << 20).await;
        assert_eq!(their.window, 1000);
        raw.send(Frame::Open(2)).await;
        let mut ch = guard(inc.accept()).await.unwrap();
        let eof_first = matches!(frames[0], Frame::Eof(_));
        for f in frames {
            raw.send(f).await;
        }
        let err = guard(h.closed()).await.unwrap_err();
        assert!(err.to_string().contains(needle), "{needle}: {err}");
        let mut buf = Vec::new();
        match guard(ch.read_to_end(&mut buf)).await {
            // The peer's EOF came before the violation: the channel ended.
            Ok(_) => assert!(eof_first, "{needle}: the read should fail"),
            Err(e) => assert!(is_reset_with(&e, needle), "{needle}: {e}"),
        }
        assert!(ch.write(b"x").await.is_err());
        // The peer is told why, unless it was the one that aborted.
        match raw.drain().await {
            Some(reason) => assert!(reason.contains(needle), "{needle}: {reason}"),
            None => assert!(matches!(err, ChanError::PeerAborted { .. }), "{err}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_never_exceeds_the_peer_window() {
    const WINDOW: u32 = 3000;
    const LEN: usize = 200_000;
    let ((h, _inc), mut raw) = Raw::start(MuxConfig::new(Role::Client));
    raw.hello(Role::Server, WINDOW).await;
    let h2 = h.clone();
    let data = pattern(7, LEN);
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        let mut c = h2.open().await.unwrap();
        c.write_all(&sent).await.unwrap();
        c.shutdown().await.unwrap();
        c
    });
    let Some(Frame::Open(id)) = guard(raw.recv()).await else {
        panic!("expected OPEN");
    };
    raw.send(Frame::OpenOk(id)).await;
    // Grant credit in odd amounts, only after data arrived, and check
    // every DATA fits in what was granted.
    let mut granted = u64::from(WINDOW);
    let mut received = Vec::new();
    let mut ungranted = 0u64;
    loop {
        match guard(raw.recv()).await {
            Some(Frame::Data { channel, payload }) => {
                assert_eq!(channel, id);
                received.extend_from_slice(&payload);
                assert!(
                    received.len() as u64 <= granted,
                    "{} bytes received, {granted} granted",
                    received.len()
                );
                ungranted += payload.len() as u64;
                while ungranted >= 777 {
                    raw.send(Frame::Credit {
                        channel: id,
                        increment: 777,
                    })
                    .await;
                    granted += 777;
                    ungranted -= 777;
                }
            }
            Some(Frame::Eof(c)) if c == id => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(received == data);
    let c = guard(writer).await.unwrap();
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receiver_returns_credit_as_it_reads() {
    const WINDOW: u32 = 4096;
    let mut cfg = MuxConfig::new(Role::Client);
    cfg.window = WINDOW;
    let ((_h, mut inc), mut raw) = Raw::start(cfg);
    raw.hello(Role::Server, 1 << 20).await;
    raw.send(Frame::Open(2)).await;
    let mut ch = guard(inc.accept()).await.unwrap();
    assert_eq!(guard(raw.recv()).await, Some(Frame::OpenOk(2)));
    // Send ten windows' worth, never more than granted, while a task
    // reads: without credit coming back this would stop.
    let data = pattern(3, 10 * WINDOW as usize);
    let expect = data.clone();
    let reader = tokio::spawn(async move {
        let mut got = vec![0u8; expect.len()];
        ch.read_exact(&mut got).await.unwrap();
        assert!(got == expect);
        ch
    });
    let mut allowed = u64::from(WINDOW);
    let mut rest = &data[..];
    while !rest.is_empty() {
        while allowed == 0 {
            match guard(raw.recv()).await {
                Some(Frame::Credit {
                    channel: 2,
                    increment,
                }) => {
                    assert!(increment <= WINDOW);
                    allowed += u64::from(increment);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        let n = rest.len().min(allowed as usize).min(1000);
        raw.send(Frame::Data {
            channel: 2,
            payload: Bytes::copy_from_slice(&rest[..n]),
        })
        .await;
        allowed -= n as u64;
        rest = &rest[n..];
    }
    let _ch = guard(reader).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_vanishes_fails_open_channels() {
    let ((h, mut inc), mut raw) = Raw::start(MuxConfig::new(Role::Client));
    raw.hello(Role::Server, 1 << 16).await;
    raw.send(Frame::Open(2)).await;
    let mut ch = guard(inc.accept()).await.unwrap();
    drop(raw);
    // Also when the driver first notices in a write (our OPEN_OK) that
    // nobody reads any more: the end of the stream decides.
    let err = guard(ch.read(&mut [0u8; 4])).await.unwrap_err();
    assert!(is_reset_with(&err, "1 channel(s) still open"), "{err}");
    assert!(matches!(
        guard(h.closed()).await,
        Err(ChanError::ConnectionLost { open: 1 })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_cut_short_by_the_end_of_the_stream_is_an_error() {
    let ((h, _inc), mut raw) = Raw::start(MuxConfig::new(Role::Client));
    raw.hello(Role::Server, 1 << 16).await;
    raw.send_raw(&[2, 0, 0, 0, 2, 0]).await;
    drop(raw);
    let err = guard(h.closed()).await.unwrap_err();
    assert!(
        matches!(
            err,
            ChanError::Frame(FrameError::Truncated { need: 12, got: 6 })
        ),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_open_resets_the_channel() {
    let ((h, _ci), mut raw) = Raw::start(MuxConfig::new(Role::Client));
    raw.hello(Role::Server, 1 << 16).await;
    {
        let open = h.open();
        // Poll once so the OPEN is queued, then drop the future.
        assert!(futures::poll!(Box::pin(open)).is_pending());
    }
    assert_eq!(guard(raw.recv()).await, Some(Frame::Open(1)));
    assert_eq!(
        guard(raw.recv()).await,
        Some(Frame::reset(1, "open cancelled"))
    );
    // A late OPEN_OK for it is ignored; the connection carries on.
    raw.send(Frame::OpenOk(1)).await;
    let h2 = h.clone();
    let next = tokio::spawn(async move { h2.open().await.map(|c| c.id()) });
    assert_eq!(guard(raw.recv()).await, Some(Frame::Open(3)));
    raw.send(Frame::OpenOk(3)).await;
    assert_eq!(guard(next).await.unwrap().unwrap(), 3);
    assert!(h.error().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_reads_cannot_grow_the_answer_queue() {
    let ((h, inc), mut raw) = Raw::start(MuxConfig::new(Role::Client));
    drop(inc); // every OPEN is answered with a RESET
    raw.hello(Role::Server, 1 << 16).await;
    // OPENs, never reading the RESETs: after the stream's buffer fills,
    // the answers queue up until the mux gives up on the peer.
    let mut batch = BytesMut::new();
    let mut id = 2u32;
    let flood = async {
        loop {
            batch.clear();
            for _ in 0..1000 {
                Frame::Open(id).encode(&mut batch).unwrap();
                id += 2;
            }
            if raw.io.write_all(&batch).await.is_err() {
                return;
            }
        }
    };
    let (err, ()) = guard(async { tokio::join!(h.closed(), flood) }).await;
    let err = err.unwrap_err();
    assert!(err.to_string().contains("does not read"), "{err}");
}
