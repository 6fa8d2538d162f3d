//! The async vchan stream on a simulated host inside one test process: two
//! domains, the XenStore handshake, echo through split halves, EOF, every
//! order, a peer that dies, a peer that scribbles an index. Every test ends
//! asserting the host reports nothing left behind.

use std::io::ErrorKind;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

use super::*;
use crate::platform::{Access, Platform, UnmapNotify};
use crate::sim::{HostConfig, SimDomain, SimHost};

const SECOND: Duration = Duration::from_secs(1);

struct Env {
    _dir: tempfile::TempDir,
    host: SimHost,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let cfg = HostConfig {
        machine_frames: 8192,
        ..HostConfig::default()
    };
    let host = SimHost::start(dir.path().join("control.sock"), cfg).unwrap();
    Env { _dir: dir, host }
}

impl Env {
    fn join(&self, domid: u16) -> SimDomain {
        SimDomain::connect(self.host.control_path(), domid).unwrap()
    }

    /// Waits for the host to process releases (it runs on its own
    /// threads), retrying the shares a server ended while the client still
    /// mapped them (deferred, as gntalloc defers), then asserts nothing
    /// leaked.
    fn assert_clean(&self, doms: &[&SimDomain]) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.host.report().leaks().is_empty() && Instant::now() < deadline {
            for d in doms {
                d.retry_deferred();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.host.report().assert_clean();
    }
}

/// A connected (server, client) pair, the offer handed over directly (the
/// XenStore handshake is exercised across processes, where each domain has
/// its own `XENSTORED_PATH`: tests/vchan_stream.rs).
async fn pair(
    (srv, cli): (&SimDomain, &SimDomain),
    port: u32,
    left_order: u16,
    right_order: u16,
) -> (VchanStream, VchanStream) {
    let addr = VchanAddress {
        server: srv.domid(),
        client: cli.domid(),
        port,
    };
    let listener = VchanServer::create(srv, addr, left_order, right_order).unwrap();
    let (ring_ref, port) = listener.offer();
    let client = connect_direct(cli, addr, ring_ref, port).unwrap();
    let server = timeout(SECOND, listener.accept_direct())
        .await
        .unwrap()
        .unwrap();
    (server, client)
}

/// u64 counters from `start`: cheap to make and to check.
fn pattern(start: u64, words: usize) -> Vec<u8> {
    (start..start + words as u64)
        .flat_map(|w| w.to_le_bytes())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_both_ways_through_split_halves() {
    let e = env();
    let (d0, d1) = (e.join(0), e.join(1));
    let (server, client) = pair((&d0, &d1), 7, 14, 13).await;

    // The server echoes until the client closes, then closes too.
    let echo = tokio::spawn(async move {
        let (mut r, mut w) = server.into_split();
        let n = tokio::io::copy(&mut r, &mut w).await.unwrap();
        w.shutdown().await.unwrap();
        n
    });
    let (mut cr, mut cw) = client.into_split();
    let data = pattern(0, 100_000); // 800 KB through 16 KiB and 8 KiB rings
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        for chunk in sent.chunks(3000) {
            cw.write_all(chunk).await.unwrap();
        }
        cw
    });
    let mut back = vec![0u8; data.len()];
    timeout(Duration::from_secs(30), cr.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert!(back == data, "echoed bytes differ");
    // vchan has no half-close: the client closes once it has everything,
    // the server's copy ends, it closes, and the client reads the end.
    let mut cw = writer.await.unwrap();
    assert_eq!(cw.stats().tx.bytes, data.len() as u64);
    cw.shutdown().await.unwrap();
    assert_eq!(echo.await.unwrap(), data.len() as u64);
    assert_eq!(
        timeout(SECOND, cr.read(&mut [0u8; 8]))
            .await
            .unwrap()
            .unwrap(),
        0
    );
    drop((cr, cw));
    e.assert_clean(&[&d0, &d1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eof_after_orderly_close_and_writes_then_fail() {
    let e = env();
    let (d0, d1) = (e.join(0), e.join(1));
    let (mut server, mut client) = pair((&d0, &d1), 1, 10, 11).await;
    server.write_all(b"last words").await.unwrap();
    server.shutdown().await.unwrap();
    let mut got = Vec::new();
    timeout(SECOND, client.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"last words");
    // Again: still the end.
    assert_eq!(client.read(&mut [0u8; 8]).await.unwrap(), 0);
    assert_eq!(client.peer_state(), Ok(PeerState::Closed));
    let err = client.write(b"x").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BrokenPipe, "{err}");
    let err = server.write(b"x").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BrokenPipe);
    assert!(matches!(
        err.get_ref().and_then(|e| e.downcast_ref::<StreamError>()),
        Some(StreamError::Closed { .. })
    ));
    drop(client);
    drop(server);
    e.assert_clean(&[&d0, &d1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_order_works_through_the_async_layer() {
    let e = env();
    let (d0, d1) = (e.join(0), e.join(1));
    for order in 10..=20u16 {
        // 10 and 11 both live in the control page: pair them.
        let other = match order {
            10 => 11,
            11 => 10,
            o => o,
        };
        for (lo, ro) in [(order, other), (other, order)] {
            let (s, c) = pair((&d0, &d1), 100 + u32::from(order), lo, ro).await;
            let ((mut sr, mut sw), (mut cr, mut cw)) = (s.into_split(), c.into_split());
            let up = pattern(u64::from(order), 300); // 2400 bytes: wraps order 10 and 11
            let down = pattern(1000 + u64::from(order), 300);
            let (a, b, (), ()) = tokio::join!(
                async {
                    let mut got = vec![0u8; down.len()];
                    cr.read_exact(&mut got).await.unwrap();
                    got
                },
                async {
                    let mut got = vec![0u8; up.len()];
                    sr.read_exact(&mut got).await.unwrap();
                    got
                },
                async { cw.write_all(&up).await.unwrap() },
                async { sw.write_all(&down).await.unwrap() },
            );
            assert_eq!(a, down, "order {lo}/{ro}");
            assert_eq!(b, up, "order {lo}/{ro}");
            drop((cr, cw));
            drop((sr, sw));
            e.assert_clean(&[&d0, &d1]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_death_fails_reads_and_writes_within_a_second() {
    let e = env();
    let (d1, d2) = (e.join(1), e.join(2));
    let (server, client) = pair((&d1, &d2), 9, 12, 12).await;
    let (mut cr, mut cw) = client.into_split();
    // Fill the client's transmit ring so that a write is blocked too.
    let mut sent = 0;
    while let Ok(Ok(n)) = timeout(Duration::from_millis(50), cw.write(&[7u8; 1024])).await {
        sent += n;
    }
    assert_eq!(sent, 4096);
    let reader = tokio::spawn(async move {
        let mut buf = [0u8; 64];
        let r = cr.read(&mut buf).await;
        (r, cr)
    });
    let writer = tokio::spawn(async move {
        let r = cw.write(b"more").await;
        (r, cw)
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!reader.is_finished() && !writer.is_finished());

    e.host.destroy_domain(1).unwrap();
    let (r, mut cr) = timeout(SECOND, reader).await.unwrap().unwrap();
    // The live byte went to 0 without the clean-close marker: not the end
    // of the stream but a reset.
    let err = r.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    let died = StreamError::PeerDied {
        ring: RingId::Right,
    };
    assert_eq!(
        err.get_ref().and_then(|e| e.downcast_ref::<StreamError>()),
        Some(&died)
    );
    // And again: never taken for the end later.
    let err = cr.read(&mut [0u8; 8]).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionReset);
    let (w, cw) = timeout(SECOND, writer).await.unwrap().unwrap();
    let err = w.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BrokenPipe);
    assert_eq!(
        err.get_ref().and_then(|e| e.downcast_ref::<StreamError>()),
        Some(&StreamError::PeerDied { ring: RingId::Left })
    );
    drop((cr, cw));
    drop(server); // its domain is gone: dropping its handles is harmless
    drop(d1);
    e.assert_clean(&[&d2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_stream_is_an_orderly_close_after_all_data() {
    let e = env();
    let (d0, d1) = (e.join(0), e.join(1));
    let (mut server, mut client) = pair((&d0, &d1), 4, 12, 13).await;
    let data = pattern(5, 2000); // 16000 bytes through a 4 KiB ring
    let sent = data.clone();
    // No shutdown: dropping the stream closes it in order.
    let writer = tokio::spawn(async move {
        client.write_all(&sent).await.unwrap();
    });
    let mut got = Vec::new();
    timeout(SECOND, server.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert!(got == data, "bytes differ");
    writer.await.unwrap();
    assert_eq!(server.peer_state(), Ok(PeerState::Closed));
    drop(server);
    e.assert_clean(&[&d0, &d1]);
}

/// A client that behaves as libxenvchan's (sets `srv_notify` and
/// `cli_live`, never the marker), writes, then closes: the server reads its
/// data, then the end of the stream, as before the marker existed. A
/// libxenvchan peer's death is the same bytes, so the same EOF.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_libxenvchan_peer_closing_is_eof() {
    let e = env();
    let (d0, d1) = (e.join(0), e.join(1));
    let addr = VchanAddress {
        server: 0,
        client: 1,
        port: 6,
    };
    let listener = VchanServer::create(&d0, addr, 10, 11).unwrap();
    let (ring_ref, port) = listener.offer();
    let chan = d1.bind_interdomain(0, port).unwrap();
    let mut ctrl = d1.map_grants(0, &[ring_ref], Access::ReadWrite).unwrap();
    ctrl.set_unmap_notify(UnmapNotify {
        clear_byte: Some(Side::Client.live_offset()),
        event: Some(chan.local_port()),
    })
    .unwrap();
    let page = ControlPage::new(ctrl.memory()).unwrap();
    page.notify(Side::Server)
        .store(crate::abi::vchan::VCHAN_NOTIFY_WRITE, Ordering::Relaxed);
    page.live(Side::Client).store(1, Ordering::Release);
    chan.notify().unwrap();
    let mut server = timeout(SECOND, listener.accept_direct())
        .await
        .unwrap()
        .unwrap();
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        let r = server.read_to_end(&mut got).await;
        (r, got, server)
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The left ring (order 10) is at 1024 in the control page.
    ctrl.memory().write(1024, b"from libxenvchan");
    page.prod(RingId::Left).store(16, Ordering::Release);
    page.live(Side::Client).store(0, Ordering::Release);
    chan.notify().unwrap();
    let (r, got, server) = timeout(SECOND, reader).await.unwrap().unwrap();
    assert_eq!(r.unwrap(), 16);
    assert_eq!(got, b"from libxenvchan");
    assert_eq!(server.peer_state(), Ok(PeerState::Closed));
    ctrl.unmap().unwrap();
    chan.close().unwrap();
    drop(server);
    e.assert_clean(&[&d0, &d1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scribbled_index_is_an_error_within_a_second() {
    let e = env();
    let (d0, d1) = (e.join(0), e.join(1));
    let addr = VchanAddress {
        server: 0,
        client: 1,
        port: 3,
    };
    let listener = VchanServer::create(&d0, addr, 12, 12).unwrap();
    let (ring_ref, port) = listener.offer();

    // A hostile client: connects by hand, then scribbles the index the
    // server reads.
    let chan = d1.bind_interdomain(0, port).unwrap();
    let mut ctrl = d1.map_grants(0, &[ring_ref], Access::ReadWrite).unwrap();
    ctrl.set_unmap_notify(UnmapNotify {
        clear_byte: Some(Side::Client.live_offset()),
        event: Some(chan.local_port()),
    })
    .unwrap();
    let page = ControlPage::new(ctrl.memory()).unwrap();
    page.live(Side::Client).store(1, Ordering::Release);
    chan.notify().unwrap();

    let server = timeout(SECOND, listener.accept_direct())
        .await
        .unwrap()
        .unwrap();
    let (mut sr, mut sw) = server.into_split();
    let reader = tokio::spawn(async move {
        let mut buf = [0u8; 64];
        let r = sr.read(&mut buf).await;
        (r, sr)
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!reader.is_finished());
    page.prod(RingId::Left).store(0x10_0000, Ordering::Release);
    chan.notify().unwrap();
    let (r, sr) = timeout(SECOND, reader).await.unwrap().unwrap();
    let err = r.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidData);
    assert!(
        matches!(
            err.get_ref().and_then(|e| e.downcast_ref::<StreamError>()),
            Some(StreamError::CorruptIndex {
                prod: 0x10_0000,
                ..
            })
        ),
        "{err}"
    );
    // Sticky, on the other half too; and the server closed the channel.
    assert_eq!(
        sw.write(b"x").await.unwrap_err().kind(),
        ErrorKind::InvalidData
    );
    assert_eq!(page.live(Side::Server).load(Ordering::Acquire), 0);
    ctrl.unmap().unwrap();
    chan.close().unwrap();
    drop((sr, sw));
    e.assert_clean(&[&d0, &d1]);
}
