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
//!   event-index suppression;
//! * the CPU time of a connected ring pair left idle for 10 s.
//!
//! The ring figures come in four runs: both ends with adaptive polling (the
//! default) and with polling off, each with the two processes wherever the
//! scheduler puts them (2 cores) and both pinned to CPU 0 (`taskset`). P2 is
//! measured through the Sink/Stream halves and through the batch API
//! (`RequestSink::send_batch`, `ResponseStream::recv_batch`; the backend is
//! `serve_echo`, which uses `RingServer::next_batch`). The Unix socket rows
//! are measured in both placements too.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use xenring::polling::Polling;
use xenring::ring::echo::{serve_echo, Msg64};
use xenring::ring::{RingClient, RingEndpoint, RingEntry, RingServer};
use xenring::sim::{HostConfig, SimDomain, SimHost};

use super::common::{spawn, Row};

const P2_REQUESTS: u64 = 1_000_000;
const P3_ROUNDS: u64 = 50_000;
const WARMUP: u64 = 5_000;
const BATCH: u64 = 32;
const RING_PAGES: usize = 4;
/// How long the connected pair is left idle to measure its CPU time.
const IDLE: Duration = Duration::from_secs(10);

const ROLE_RING: &str = "p2p3-ring-back";
const ROLE_UNIX: &str = "p2p3-unix-echo";
const ENV_SOCKET: &str = "XENRING_BENCH_SIM_SOCKET";
const ENV_OFFER: &str = "XENRING_BENCH_RING_OFFER";
const ENV_UNIX: &str = "XENRING_BENCH_UNIX";
const ENV_POLLING: &str = "XENRING_BENCH_POLLING";

const G_P2: &str = "P2 pipelined 64-byte requests";
const G_P3: &str = "P3 one-in-flight round trip";
const G_NOTIFY: &str = "notifications per request";
const G_IDLE: &str = "idle connected ring pair, 10 s (both processes)";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Where the two processes of a measurement run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    /// Wherever the scheduler puts them (2 cores).
    TwoCores,
    /// Both pinned to CPU 0 with taskset.
    OneCore,
}

impl Placement {
    fn label(self) -> &'static str {
        match self {
            Placement::TwoCores => "2 cores",
            Placement::OneCore => "1 core",
        }
    }
}

/// Pins every thread of `pid` to `cpus` (a taskset list), or warns.
fn pin(pid: u32, cpus: &str) {
    let ok = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("warning: taskset -a -p -c {cpus} {pid} failed");
    }
}

/// CPU time (user + system) of process `pid` so far, from /proc.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    // Fields after the command name (which is in parentheses).
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|w| w.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 of rest.
    let ticks = f[11] + f[12];
    // /proc counts in USER_HZ, 100 on Linux (x86, arm64).
    Duration::from_millis(ticks * 10)
}

fn polling_name(p: Polling) -> &'static str {
    match p {
        Polling::Off => "polling off",
        Polling::Fixed(_) => "polling fixed",
        Polling::Adaptive { .. } => "polling adaptive",
    }
}

/// Runs this module's measurements.
pub fn run() -> Vec<Row> {
    let dir = std::env::temp_dir().join(format!("xenring-bench-ring-{}", std::process::id()));
    // Private (mode 0700): the sim host refuses a socket folder others can reach.
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(&dir)
        .expect("bench dir");
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let all_cpus = format!("0-{}", cpus - 1);
    let mut rows = Vec::new();
    let mut summary = Vec::new();
    for placement in [Placement::TwoCores, Placement::OneCore] {
        if placement == Placement::OneCore {
            pin(std::process::id(), "0");
        }
        for polling in [Polling::default(), Polling::Off] {
            let idle = placement == Placement::TwoCores && polling != Polling::Off;
            let f = ring(&dir, polling, placement, idle);
            let tag = format!("{}, {}", polling_name(polling), placement.label());
            rows.push(Row {
                group: G_P2,
                name: format!("xenring ring, sink+stream, {tag}"),
                value: f.p2_sink / 1e3,
                unit: "k req/s",
            });
            rows.push(Row {
                group: G_P2,
                name: format!("xenring ring, batch API, {tag}"),
                value: f.p2_batch / 1e3,
                unit: "k req/s",
            });
            rows.push(Row {
                group: G_P3,
                name: format!("xenring ring call(), {tag}"),
                value: f.p3.as_secs_f64() * 1e6,
                unit: "us",
            });
            rows.push(Row {
                group: G_NOTIFY,
                name: format!("P2 sink, front -> back, {tag}"),
                value: f.front_p2 * 1000.0,
                unit: "per 1000 req",
            });
            rows.push(Row {
                group: G_NOTIFY,
                name: format!("P3, front -> back, {tag}"),
                value: f.front_p3 * 1000.0,
                unit: "per 1000 req",
            });
            rows.push(Row {
                group: G_NOTIFY,
                name: format!("back -> front, whole run, {tag}"),
                value: f.back_all * 1000.0,
                unit: "per 1000 req",
            });
            if let Some(cpu) = f.idle_cpu {
                rows.push(Row {
                    group: G_IDLE,
                    name: format!("xenring ring pair CPU, {tag}"),
                    value: cpu.as_secs_f64() / IDLE.as_secs_f64() * 100.0,
                    unit: "% of one core",
                });
            }
            summary.push((tag, f));
        }
        let (p2_unix, p3_unix) = unix(&dir);
        rows.push(Row {
            group: G_P2,
            name: format!("Unix socket, pipelined blocking I/O, {}", placement.label()),
            value: p2_unix / 1e3,
            unit: "k req/s",
        });
        rows.push(Row {
            group: G_P3,
            name: format!("Unix socket ping-pong, blocking, {}", placement.label()),
            value: p3_unix.as_secs_f64() * 1e6,
            unit: "us",
        });
        for (tag, f) in summary.drain(..) {
            println!(
                "{tag}: P2 sink/unix = {:.2}x, P2 batch/unix = {:.2}x, P3 ring/unix latency = {:.2}x",
                f.p2_sink / p2_unix,
                f.p2_batch / p2_unix,
                f.p3.as_secs_f64() / p3_unix.as_secs_f64()
            );
        }
        if placement == Placement::OneCore {
            pin(std::process::id(), &all_cpus);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    rows.retain(|r| r.value.is_finite());
    // Each group's rows together, in the order measured.
    let order = [G_P2, G_P3, G_NOTIFY, G_IDLE];
    rows.sort_by_key(|r| order.iter().position(|g| *g == r.group));
    rows
}

/// One placement and polling mode's ring figures.
struct Figures {
    p2_sink: f64,
    p2_batch: f64,
    p3: Duration,
    front_p2: f64,
    front_p3: f64,
    back_all: f64,
    idle_cpu: Option<Duration>,
}

/// The ring figures with both ends set to `polling`: P2 rates (req/s)
/// through the sink and the batch API, P3 mean round trip, the frontend's
/// notifications per request in P2 (sink) and in P3, the backend's over
/// the whole run, and (if `idle`) the CPU time of both processes while the
/// connected pair sits idle for [`IDLE`].
fn ring(dir: &std::path::Path, polling: Polling, placement: Placement, idle: bool) -> Figures {
    let host = SimHost::start(dir.join("control.sock"), HostConfig::default()).expect("sim host");
    let dom = SimDomain::connect(host.control_path(), 1).expect("domain 1");
    let rt = rt();
    let out = rt.block_on(async {
        let (client, ep) =
            RingClient::<Msg64, Msg64>::share(&dom, 0, RING_PAGES).expect("share ring");
        client.set_polling(polling);
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
        let mode = if polling == Polling::Off {
            "off"
        } else {
            "adaptive"
        };
        let mut child = spawn(
            ROLE_RING,
            &[
                (ENV_SOCKET, host.control_path().display().to_string()),
                (ENV_OFFER, offer),
                (ENV_POLLING, mode.to_string()),
            ],
        );
        if placement == Placement::OneCore {
            pin(child.id(), "0");
        }
        // P2 through the sink: warm up, then measure.
        pipeline(&client, WARMUP).await;
        let s0 = client.stats();
        let start = Instant::now();
        pipeline(&client, P2_REQUESTS).await;
        let p2_sink = P2_REQUESTS as f64 / start.elapsed().as_secs_f64();
        let s1 = client.stats();
        // P2 through the batch API.
        pipeline_batch(&client, WARMUP).await;
        let start = Instant::now();
        pipeline_batch(&client, P2_REQUESTS).await;
        let p2_batch = P2_REQUESTS as f64 / start.elapsed().as_secs_f64();
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
        // Idle: the pair stays connected and does nothing.
        let idle_cpu = if idle {
            let me = std::process::id();
            let (a0, b0) = (cpu_time(me), cpu_time(child.id()));
            tokio::time::sleep(IDLE).await;
            let (a1, b1) = (cpu_time(me), cpu_time(child.id()));
            // Still connected: one more call works.
            client
                .call(Msg64::request(1))
                .await
                .expect("call after idle");
            Some((a1 - a0) + (b1 - b0))
        } else {
            None
        };
        client.close().await;
        // The backend reports its notifications on stdout.
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
        Figures {
            p2_sink,
            p2_batch,
            p3,
            front_p2: (s1.notifications - s0.notifications) as f64 / P2_REQUESTS as f64,
            front_p3: (s3.notifications - s2.notifications) as f64 / P3_ROUNDS as f64,
            back_all: back.first().copied().unwrap_or(f64::NAN),
            idle_cpu,
        }
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

/// Pipelines `n` requests through the batch API (batches of [`BATCH`],
/// responses taken as many at a time as are there) and checks every answer.
async fn pipeline_batch(client: &RingClient<Msg64, Msg64>, n: u64) {
    let (mut sink, mut stream) = client.split();
    let writer = tokio::spawn(async move {
        let mut reqs: Vec<Msg64> = Vec::with_capacity(BATCH as usize);
        let mut seq = 0;
        while seq < n {
            let k = BATCH.min(n - seq);
            reqs.clear();
            reqs.extend((seq..seq + k).map(Msg64::request));
            let mut sent = 0;
            while sent < reqs.len() {
                sent += sink.send_batch(&mut reqs[sent..]).await.expect("send");
            }
            seq += k;
        }
    });
    let mut out = Vec::with_capacity(256);
    let mut seq = 0;
    while seq < n {
        out.clear();
        stream.recv_batch(&mut out, 256).await.expect("receive");
        assert!(!out.is_empty(), "the ring closed early");
        for rsp in &out {
            assert_eq!(rsp.data, Msg64::answer(&Msg64::request(seq)).data);
            seq += 1;
        }
    }
    writer.await.expect("writer");
}

/// The Unix socket figures: P2 rate (req/s), P3 mean round trip.
fn unix(dir: &std::path::Path) -> (f64, Duration) {
    let path = dir.join("echo.sock");
    let _ = std::fs::remove_file(&path);
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
            let polling = match std::env::var(ENV_POLLING).as_deref() {
                Ok("off") => Polling::Off,
                _ => Polling::default(),
            };
            let answered = rt().block_on(async {
                let server = RingServer::<Msg64, Msg64>::connect(&dom, &ep).expect("connect");
                server.set_polling(polling);
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
