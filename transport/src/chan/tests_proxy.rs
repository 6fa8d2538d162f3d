//! The proxy with real sockets (a Unix listener in a temporary directory,
//! TCP and Unix echo targets on loopback), and the multiplexer over a real
//! vchan stream between two simulated domains (the production pairing).
//! Timeouts are only hang guards.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use super::tests::{exchange, guard, pattern};
use super::*;
use crate::platform::Platform;
use crate::sim::{HostConfig, SimDomain, SimHost};
use crate::stream::{connect_direct, VchanAddress, VchanServer};

/// A TCP echo server on 127.0.0.1: echoes until EOF, then closes.
async fn tcp_echo() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                    let _ = w.shutdown().await;
                }
            });
        }
    });
    addr
}

/// A Unix echo server at `path`.
fn unix_echo(path: &Path) {
    let l = UnixListener::bind(path).unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                    let _ = w.shutdown().await;
                }
            });
        }
    });
}

/// A client of the frontend socket: sends `data`, half closes, reads the
/// echo to the end.
async fn echo_client(sock: &Path, data: Vec<u8>) {
    let mut s = UnixStream::connect(sock).await.unwrap();
    let (mut r, mut w) = s.split();
    let writer = async {
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let reader = async {
        let mut got = Vec::with_capacity(data.len());
        r.read_to_end(&mut got).await.unwrap();
        got
    };
    let ((), got) = tokio::join!(writer, reader);
    assert!(
        got == data,
        "echo differs ({} of {} bytes)",
        got.len(),
        data.len()
    );
}

/// Waits (bounded) until the mux has no channel left, so that every
/// connection task has finished before the proxies are stopped.
async fn settle(h: &MuxHandle) {
    guard(async {
        while h.stats().channels_open > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

fn muxes() -> ((MuxHandle, Incoming), (MuxHandle, Incoming)) {
    let (a, b) = tokio::io::duplex(256 * 1024);
    (
        Mux::start(a, MuxConfig::new(Role::Client)),
        Mux::start(b, MuxConfig::new(Role::Server)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_clients_reach_a_tcp_target_with_half_close() {
    const CLIENTS: usize = 8;
    const LEN: usize = 200_000;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("front.sock");
    let echo = tcp_echo().await;
    let ((fh, _fi), (bh, bi)) = muxes();
    let stop = CancellationToken::new();
    let front = tokio::spawn(serve_listener(
        UnixListener::bind(&sock).unwrap(),
        fh.clone(),
        stop.clone(),
    ));
    let target: Target = format!("tcp:{echo}").parse().unwrap();
    let back = tokio::spawn(serve_incoming(bi, target, stop.clone()));
    let mut clients = Vec::new();
    for k in 0..CLIENTS {
        let sock = sock.clone();
        clients.push(tokio::spawn(async move {
            echo_client(&sock, pattern(k as u64, LEN)).await
        }));
    }
    for c in clients {
        guard(c).await.unwrap();
    }
    settle(&fh).await;
    settle(&bh).await;
    stop.cancel();
    let (f, b) = (guard(front).await.unwrap(), guard(back).await.unwrap());
    let bytes = (CLIENTS * LEN) as u64;
    for s in [&f, &b] {
        assert_eq!(s.connections, CLIENTS as u64, "{s}");
        assert_eq!((s.refused, s.failed), (0, 0), "{s}");
        assert_eq!((s.bytes_to_peer, s.bytes_from_peer), (bytes, bytes), "{s}");
        assert!(s.ended_by.is_none(), "{:?}", s.ended_by);
    }
    assert_eq!(fh.stats().resets_received, 0);
    assert!(fh.error().is_none() && bh.error().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unix_target_works_too() {
    let dir = tempfile::tempdir().unwrap();
    let (sock, target_sock) = (dir.path().join("front.sock"), dir.path().join("t.sock"));
    unix_echo(&target_sock);
    let ((fh, _fi), (bh, bi)) = muxes();
    let stop = CancellationToken::new();
    let front = tokio::spawn(serve_listener(
        UnixListener::bind(&sock).unwrap(),
        fh.clone(),
        stop.clone(),
    ));
    let target: Target = format!("unix:{}", target_sock.display()).parse().unwrap();
    let back = tokio::spawn(serve_incoming(bi, target, stop.clone()));
    guard(echo_client(&sock, pattern(1, 100_000))).await;
    settle(&fh).await;
    settle(&bh).await;
    stop.cancel();
    let (f, b) = (guard(front).await.unwrap(), guard(back).await.unwrap());
    assert_eq!((f.connections, b.connections), (1, 1));
    assert_eq!(b.bytes_from_peer, 100_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_target_resets_only_its_channel() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("front.sock");
    // A loopback port with nobody listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ((fh, _fi), (bh, bi)) = muxes();
    let stop = CancellationToken::new();
    let front = tokio::spawn(serve_listener(
        UnixListener::bind(&sock).unwrap(),
        fh.clone(),
        stop.clone(),
    ));
    let target = Target::Tcp {
        host: "127.0.0.1".into(),
        port,
    };
    let back = tokio::spawn(serve_incoming(bi, target, stop.clone()));

    // Through the socket: the client's connection is closed, no data.
    for _ in 0..2 {
        let mut s = guard(UnixStream::connect(&sock)).await.unwrap();
        let _ = s.write_all(b"hello?").await; // may fail once closed
        let mut got = Vec::new();
        match guard(s.read_to_end(&mut got)).await {
            Ok(_) => assert!(got.is_empty()),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
    }
    // Directly: the reason reaches the opener.
    let mut ch = guard(fh.open()).await.unwrap();
    let err = guard(ch.read(&mut [0u8; 8])).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("connect to tcp:127.0.0.1:{port}")) && msg.contains("refused"),
        "{msg}"
    );
    drop(ch);
    // The connection itself is fine.
    assert!(fh.error().is_none() && bh.error().is_none());
    settle(&fh).await;
    settle(&bh).await;
    stop.cancel();
    let (f, b) = (guard(front).await.unwrap(), guard(back).await.unwrap());
    assert_eq!((f.connections, f.failed), (2, 2), "{f}");
    assert_eq!((b.connections, b.refused), (3, 3), "{b}");
}

/// A connection that moved data both ways and then ended in an error (the
/// peer reset its channel) still counts its bytes in the summary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_connection_still_counts_its_bytes() {
    const UP: usize = 3 << 20;
    const DOWN: usize = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("front.sock");
    let ((fh, _fi), (_bh, mut bi)) = muxes();
    let stop = CancellationToken::new();
    let front = tokio::spawn(serve_listener(
        UnixListener::bind(&sock).unwrap(),
        fh.clone(),
        stop.clone(),
    ));
    let mut client = guard(UnixStream::connect(&sock)).await.unwrap();
    let up = pattern(7, UP);
    let (mut cr, mut cw) = client.split();
    let mut back = guard(bi.accept()).await.unwrap();
    let mut got_up = vec![0u8; UP];
    let mut got_down = vec![0u8; DOWN];
    let (w, r) =
        guard(async { tokio::join!(cw.write_all(&up), back.read_exact(&mut got_up)) }).await;
    w.unwrap();
    r.unwrap();
    assert!(got_up == up);
    let down = pattern(8, DOWN);
    let (w, r) = guard(async {
        tokio::join!(
            async {
                back.write_all(&down).await?;
                back.flush().await
            },
            cr.read_exact(&mut got_down)
        )
    })
    .await;
    w.unwrap();
    r.unwrap();
    assert!(got_down == down);
    // Now the peer fails the channel: the proxy's piping ends in an error.
    back.reset("failing on purpose");
    let mut rest = Vec::new();
    let _ = guard(cr.read_to_end(&mut rest)).await;
    settle(&fh).await;
    stop.cancel();
    let f = guard(front).await.unwrap();
    assert_eq!((f.connections, f.failed), (1, 1), "{f}");
    assert_eq!(
        (f.bytes_to_peer, f.bytes_from_peer),
        (UP as u64, DOWN as u64),
        "{f}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_stops_when_the_mux_ends() {
    let dir = tempfile::tempdir().unwrap();
    let ((fh, fi), (bh, bi)) = muxes();
    let stop = CancellationToken::new();
    let front = tokio::spawn(serve_listener(
        UnixListener::bind(dir.path().join("s")).unwrap(),
        fh,
        stop.clone(),
    ));
    drop(fi);
    // The backend end goes away entirely: the frontend's mux ends in order.
    drop((bh, bi));
    let f = guard(front).await.unwrap();
    assert!(
        matches!(f.ended_by, Some(ChanError::Closed)),
        "{:?}",
        f.ended_by
    );
}

#[test]
fn targets_parse_and_print() {
    let ok = [
        ("unix:/run/x.sock", Target::Unix("/run/x.sock".into())),
        (
            "tcp:127.0.0.1:22",
            Target::Tcp {
                host: "127.0.0.1".into(),
                port: 22,
            },
        ),
        (
            "tcp:localhost:65535",
            Target::Tcp {
                host: "localhost".into(),
                port: 65535,
            },
        ),
        (
            "tcp:[::1]:80",
            Target::Tcp {
                host: "::1".into(),
                port: 80,
            },
        ),
    ];
    for (s, t) in ok {
        assert_eq!(s.parse::<Target>().unwrap(), t);
        assert_eq!(t.to_string(), s);
    }
    for (bad, why) in [
        ("", "expected unix:/path or tcp:host:port"),
        ("http://x", "expected unix:/path or tcp:host:port"),
        ("unix:", "path is empty"),
        ("tcp:host", "no port"),
        ("tcp::80", "host is empty"),
        ("tcp:[]:80", "host is empty"),
        ("tcp:h:0", "port \"0\""),
        ("tcp:h:65536", "port \"65536\""),
        ("tcp:h:ssh", "port \"ssh\""),
    ] {
        let e = bad.parse::<Target>().unwrap_err();
        assert_eq!(e.value, bad);
        let msg = e.to_string();
        assert!(
            msg.contains(why) && msg.contains(&format!("{bad:?}")),
            "{msg}"
        );
    }
}

struct Env {
    _dir: tempfile::TempDir,
    host: SimHost,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let cfg = HostConfig {
            machine_frames: 8192,
            ..HostConfig::default()
        };
        let host = SimHost::start(dir.path().join("control.sock"), cfg).unwrap();
        Env { _dir: dir, host }
    }

    fn join(&self, domid: u16) -> SimDomain {
        SimDomain::connect(self.host.control_path(), domid).unwrap()
    }

    /// Waits for the host to process releases, then asserts nothing leaked.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_over_a_real_vchan_between_two_domains() {
    let env = Env::new();
    let (d0, d1) = (env.join(0), env.join(1));
    let addr = VchanAddress {
        server: d0.domid(),
        client: d1.domid(),
        port: 5,
    };
    let listener = VchanServer::create(&d0, addr, 14, 14).unwrap();
    let (ring_ref, port) = listener.offer();
    let front_io = connect_direct(&d1, addr, ring_ref, port).unwrap();
    let back_io = guard(listener.accept_direct()).await.unwrap();

    let (fh, mut fi) = Mux::start(front_io, MuxConfig::new(Role::Client));
    let (bh, mut bi) = Mux::start(back_io, MuxConfig::new(Role::Server));
    let server = tokio::spawn(async move {
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let c = bi.accept().await.unwrap();
            let id = u64::from(c.id());
            tasks.push(tokio::spawn(exchange(
                c,
                pattern(id + 100, 256 * 1024),
                pattern(id, 256 * 1024),
            )));
        }
        for t in tasks {
            t.await.unwrap();
        }
        bi
    });
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let h = fh.clone();
        tasks.push(tokio::spawn(async move {
            let c = h.open().await.unwrap();
            let id = u64::from(c.id());
            exchange(c, pattern(id, 256 * 1024), pattern(id + 100, 256 * 1024)).await;
        }));
    }
    for t in tasks {
        guard(t).await.unwrap();
    }
    let bi = guard(server).await.unwrap();
    assert_eq!(fh.stats().bytes_received, 8 * 256 * 1024);
    // The backend end goes: its driver closes the vchan; the frontend's
    // sees the orderly close and ends too, and nothing is left behind.
    drop((bh, bi));
    drop(fh);
    assert!(guard(fi.accept()).await.is_none());
    drop(fi);
    env.assert_clean(&[&d0, &d1]);
}
