//! P2 and P3: the async ring between two domain processes on the simulated
//! host (this process is domain 1, the frontend; a child process is domain
//! 0, the echo backend), side by side with a Unix socket doing the same
//! between two processes:
//!
//! * P2: pipelined 64-byte requests (up to a ring's worth in flight; the
//!   ring's sink pushes every 32, the socket writes 32 at a time), every
//!   answer's content checked;
//! * P3: one request in flight, round-trip latency (ring `call` vs socket
//!   ping-pong with blocking reads and writes);
//! * notifications per request on the ring (from `RingStats`), showing the
//!   event-index suppression.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use xenring::ring::echo::{serve_echo, Msg64};
use xenring::ring::{RingClient, RingEndpoint, RingEntry, RingServer};
use xenring::sim::{HostConfig, SimDomain, SimHost};

use super::common::{spawn, Row};

const P2_REQUESTS: u64 = 1_000_000;
const P3_ROUNDS: u64 = 50_000;
const WARMUP: u64 = 5_000;
const BATCH: u64 = 32;
const RING_PAGES: usize = 4;

const ROLE_RING: &str = "p2p3-ring-back";
const ROLE_UNIX: &str = "p2p3-unix-echo";
const ENV_SOCKET: &str = "XENRING_BENCH_SIM_SOCKET";
const ENV_OFFER: &str = "XENRING_BENCH_RING_OFFER";
const ENV_UNIX: &str = "XENRING_BENCH_UNIX";

const G_P2: &str = "P2 pipelined 64-byte requests";
const G_P3: &str = "P3 one-in-flight round trip";
const G_NOTIFY: &str = "notifications per request";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Runs this module's measurements.
pub fn run() -> Vec<Row> {
    let dir = std::env::temp_dir().join(format!("xenring-bench-ring-{}", std::process::id()));
    // Private (mode 0700): the sim host refuses a socket folder others can reach.
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(&dir)
        .expect("bench dir");
    let (p2_ring, p3_ring, front_p2, front_p3, back_all) = ring(&dir);
    let (p2_unix, p3_unix) = unix(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    let mut rows = vec![
        Row {
            group: G_P2,
            name: format!("xenring async ring ({RING_PAGES}-page, sink+stream)"),
            value: p2_ring / 1e3,
            unit: "k req/s",
        },
        Row {
            group: G_P2,
            name: "Unix socket, pipelined blocking I/O".into(),
            value: p2_unix / 1e3,
            unit: "k req/s",
        },
        Row {
            group: G_P3,
            name: "xenring async ring, call()".into(),
            value: p3_ring.as_secs_f64() * 1e6,
            unit: "us",
        },
        Row {
            group: G_P3,
            name: "Unix socket ping-pong, blocking".into(),
            value: p3_unix.as_secs_f64() * 1e6,
            unit: "us",
        },
        Row {
            group: G_NOTIFY,
            name: "P2 pipelined, frontend -> backend".into(),
            value: front_p2 * 1000.0,
            unit: "per 1000 req",
        },
        Row {
            group: G_NOTIFY,
            name: "P3 one in flight, frontend -> backend".into(),
            value: front_p3 * 1000.0,
            unit: "per 1000 req",
        },
        Row {
            group: G_NOTIFY,
            name: "backend -> frontend, whole run (P2 + P3)".into(),
            value: back_all * 1000.0,
            unit: "per 1000 req",
        },
    ];
    println!(
        "P2 ring/unix = {:.2}x, P3 ring/unix latency = {:.2}x",
        p2_ring / p2_unix,
        p3_ring.as_secs_f64() / p3_unix.as_secs_f64()
    );
    rows.retain(|r| r.value.is_finite());
    rows
}

/// The ring figures: P2 rate (req/s), P3 mean round trip, the frontend's
/// notifications per request in P2 and in P3, and the backend's over the
/// whole run.
fn ring(dir: &std::path::Path) -> (f64, Duration, f64, f64, f64) {
    let host = SimHost::start(dir.join("control.sock"), HostConfig::default()).expect("sim host");
    let dom = SimDomain::connect(host.control_path(), 1).expect("domain 1");
    let rt = rt();
    let out = rt.block_on(async {
        let (client, ep) =
            RingClient::<Msg64, Msg64>::share(&dom, 0, RING_PAGES).expect("share ring");
        let offer = format!(
            "{} {} {}",
            ep.domid,
            ep.port,
            ep.refs
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        let mut child = spawn(
            ROLE_RING,
            &[
                (ENV_SOCKET, host.control_path().display().to_string()),
                (ENV_OFFER, offer),
            ],
        );
        // P2: warm up, then measure.
        pipeline(&client, WARMUP).await;
        let s0 = client.stats();
        let start = Instant::now();
        pipeline(&client, P2_REQUESTS).await;
        let p2 = P2_REQUESTS as f64 / start.elapsed().as_secs_f64();
        let s1 = client.stats();
        // P3.
        for seq in 0..WARMUP {
            client.call(Msg64::request(seq)).await.expect("call");
        }
        let s2 = client.stats();
        let start = Instant::now();
        for seq in 0..P3_ROUNDS {
            let req = Msg64::request(seq);
            let rsp = client.call(req).await.expect("call");
            assert_eq!(rsp.data, Msg64::answer(&req).data);
        }
        let p3 = start.elapsed() / P3_ROUNDS as u32;
        let s3 = client.stats();
        client.close().await;
        // The backend reports its notifications per phase on stdout.
        let mut text = String::new();
        child
            .stdout
            .take()
            .expect("piped")
            .read_to_string(&mut text)
            .expect("child output");
        assert!(
            child.wait().expect("child").success(),
            "ring backend failed"
        );
        let back: Vec<f64> = text
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        let front_p2 = (s1.notifications - s0.notifications) as f64 / P2_REQUESTS as f64;
        let front_p3 = (s3.notifications - s2.notifications) as f64 / P3_ROUNDS as f64;
        let back_all = back.first().copied().unwrap_or(f64::NAN);
        (p2, p3, front_p2, front_p3, back_all)
    });
    drop(dom);
    for _ in 0..200 {
        if host.report().domains.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    host.report().assert_clean();
    out
}

/// Pipelines `n` requests through the sink and checks every answer.
async fn pipeline(client: &RingClient<Msg64, Msg64>, n: u64) {
    let (mut sink, mut stream) = client.split();
    let writer = tokio::spawn(async move {
        for seq in 0..n {
            sink.feed(Msg64::request(seq)).await.expect("feed");
            if seq % BATCH == BATCH - 1 {
                sink.flush().await.expect("flush");
            }
        }
        sink.flush().await.expect("flush");
    });
    for seq in 0..n {
        let rsp = stream.next().await.expect("open").expect("response");
        assert_eq!(rsp.data, Msg64::answer(&Msg64::request(seq)).data);
    }
    writer.await.expect("writer");
}

/// The Unix socket figures: P2 rate (req/s), P3 mean round trip.
fn unix(dir: &std::path::Path) -> (f64, Duration) {
    let path = dir.join("echo.sock");
    let listener = UnixListener::bind(&path).expect("bind");
    let mut child = spawn(ROLE_UNIX, &[(ENV_UNIX, path.display().to_string())]);
    let (conn, _) = listener.accept().expect("accept");
    // P2: a writer thread sends batches of 32, this thread reads and checks.
    let run_p2 = |n: u64| {
        let mut w = conn.try_clone().expect("clone");
        let writer = std::thread::spawn(move || {
            let mut buf = Vec::with_capacity((BATCH * 64) as usize);
            for seq in 0..n {
                let mut m = Msg64::request(seq);
                m.id = seq;
                let mut b = [0u8; 64];
                m.encode(&mut b);
                buf.extend_from_slice(&b);
                if seq % BATCH == BATCH - 1 || seq == n - 1 {
                    w.write_all(&buf).expect("write");
                    buf.clear();
                }
            }
        });
        let mut r = &conn;
        let mut b = [0u8; 64];
        for seq in 0..n {
            r.read_exact(&mut b).expect("read");
            let m = Msg64::decode(&b);
            assert_eq!(m.data, Msg64::answer(&Msg64::request(seq)).data);
        }
        writer.join().expect("writer");
    };
    run_p2(WARMUP);
    let start = Instant::now();
    run_p2(P2_REQUESTS);
    let p2 = P2_REQUESTS as f64 / start.elapsed().as_secs_f64();
    let mut c = &conn;
    let mut ping = |seq: u64| {
        let req = Msg64::request(seq);
        let mut b = [0u8; 64];
        req.encode(&mut b);
        c.write_all(&b).expect("write");
        c.read_exact(&mut b).expect("read");
        assert_eq!(Msg64::decode(&b).data, Msg64::answer(&req).data);
    };
    for seq in 0..WARMUP {
        ping(seq);
    }
    let start = Instant::now();
    for seq in 0..P3_ROUNDS {
        ping(seq);
    }
    let p3 = start.elapsed() / P3_ROUNDS as u32;
    drop(conn);
    assert!(child.wait().expect("child").success(), "unix echo failed");
    (p2, p3)
}

/// Handles this module's child roles; false if `role` is not one of them.
pub fn child(role: &str) -> bool {
    match role {
        ROLE_RING => {
            let socket = PathBuf::from(std::env::var(ENV_SOCKET).expect("socket"));
            let offer = std::env::var(ENV_OFFER).expect("offer");
            let mut it = offer.split(' ');
            let mut next = || it.next().expect("offer field").to_string();
            let domid: u16 = next().parse().expect("domid");
            let port: u32 = next().parse().expect("port");
            let refs = next().split(',').map(|r| r.parse().expect("ref")).collect();
            let ep = RingEndpoint { domid, port, refs };
            let dom = SimDomain::connect(&socket, 0).expect("domain 0");
            let answered = rt().block_on(async {
                let server = RingServer::<Msg64, Msg64>::connect(&dom, &ep).expect("connect");
                let responder = server.responder();
                let n = serve_echo(server).await.expect("serve");
                (n, responder.stats())
            });
            let (n, stats) = answered;
            println!("{}", stats.notifications as f64 / n.max(1) as f64);
            true
        }
        ROLE_UNIX => {
            let path = std::env::var(ENV_UNIX).expect("unix path");
            let mut s = UnixStream::connect(path).expect("connect");
            let mut buf = vec![0u8; 64 * 256];
            let mut have = 0usize;
            loop {
                let n = s.read(&mut buf[have..]).expect("read");
                if n == 0 {
                    break;
                }
                have += n;
                let whole = have / 64 * 64;
                let mut out = Vec::with_capacity(whole);
                for chunk in buf[..whole].chunks(64) {
                    let mut b = [0u8; 64];
                    Msg64::answer(&Msg64::decode(chunk)).encode(&mut b);
                    out.extend_from_slice(&b);
                }
                s.write_all(&out).expect("write");
                buf.copy_within(whole..have, 0);
                have -= whole;
            }
            true
        }
        _ => false,
    }
}
