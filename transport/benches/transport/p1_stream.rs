//! P1: stream throughput with 64 KiB writes. A vchan stream with a 1 MiB
//! ring (order 20) between two domain processes on the simulated host (set
//! up through the XenStore handshake), a Unix-domain socket stream between
//! two processes, and single-core memcpy of 64 KiB blocks into a 1 MiB
//! buffer (the ceiling: the vchan copies every byte in and out once).

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Command, Stdio};
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xenring::sim::{HostConfig, SimDomain, SimHost};
use xenring::stream::{connect, VchanAddress, VchanServer};
use xenring::xenstore::XsClient;

use super::common::{spawn, Row, ROLE};

const GROUP: &str = "P1 stream throughput";
const TOTAL: u64 = 4 << 30;
const CHUNK: usize = 64 << 10;
const ADDR: VchanAddress = VchanAddress {
    server: 1,
    client: 2,
    port: 4242,
};
const SOCK_ENV: &str = "XENRING_BENCH_P1_SOCK";

/// Runs this module's measurements.
pub fn run() -> Vec<Row> {
    vec![
        Row {
            group: GROUP,
            name: "xenring vchan stream (1 MiB ring, 64 KiB writes)".into(),
            value: vchan(),
            unit: "MB/s",
        },
        Row {
            group: GROUP,
            name: "Unix-domain socket stream (64 KiB writes)".into(),
            value: unix(),
            unit: "MB/s",
        },
        Row {
            group: GROUP,
            name: "memcpy, one core (64 KiB blocks into 1 MiB)".into(),
            value: memcpy(),
            unit: "MB/s",
        },
    ]
}

/// Handles this module's child roles; false if `role` is not one of them.
pub fn child(role: &str) -> bool {
    match role {
        "p1-vchan-server" => runtime().block_on(vchan_server()),
        "p1-vchan-client" => runtime().block_on(vchan_client()),
        "p1-unix-writer" => unix_writer(),
        _ => return false,
    }
    true
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn mbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs / 1e6
}

fn vchan() -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let host = SimHost::start(dir.path().join("control.sock"), HostConfig::default())
        .expect("start the simulated host");
    let me = std::env::current_exe().expect("own path");
    let spawn_dom = |domid: u16, role: &str| {
        Command::new(env!("CARGO_BIN_EXE_xenring-sim"))
            .arg("--socket")
            .arg(host.control_path())
            .args(["exec", "--domid", &domid.to_string(), "--"])
            .arg(&me)
            .env(ROLE, role)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn a domain process")
    };
    let server = spawn_dom(ADDR.server, "p1-vchan-server");
    let client = spawn_dom(ADDR.client, "p1-vchan-client");
    let out = client.wait_with_output().expect("client");
    assert!(out.status.success(), "vchan client failed");
    let s = server.wait_with_output().expect("server");
    assert!(s.status.success(), "vchan server failed");
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("  vchan: {}", text.trim());
    host.report()
        .leaks()
        .iter()
        .for_each(|l| eprintln!("  leak: {l}"));
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("mbps="))
        .and_then(|v| v.parse().ok())
        .expect("client reports mbps=")
}

async fn vchan_server() {
    let dom = SimDomain::from_env().expect("join the host");
    let xs = XsClient::connect(std::env::var_os("XENSTORED_PATH").expect("XENSTORED_PATH"))
        .await
        .expect("xenstore");
    let listener = VchanServer::listen(&dom, &xs, ADDR, 12, 20)
        .await
        .expect("listen");
    let mut s = listener.accept(&xs).await.expect("accept");
    let buf = vec![0x5au8; CHUNK];
    let mut sent = 0u64;
    while sent < TOTAL {
        s.write_all(&buf).await.expect("write");
        sent += CHUNK as u64;
    }
    let mut ack = [0u8; 1];
    s.read_exact(&mut ack).await.expect("ack");
    s.shutdown().await.expect("close");
}

async fn vchan_client() {
    let dom = SimDomain::from_env().expect("join the host");
    let xs = XsClient::connect(std::env::var_os("XENSTORED_PATH").expect("XENSTORED_PATH"))
        .await
        .expect("xenstore");
    let mut s = connect(&dom, &xs, ADDR).await.expect("connect");
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0u64;
    // Time from the first byte on, so setup is not counted.
    s.read_exact(&mut buf[..1]).await.expect("first byte");
    got += 1;
    let t = Instant::now();
    while got < TOTAL {
        let n = s.read(&mut buf).await.expect("read");
        assert!(n > 0, "early end of stream");
        got += n as u64;
    }
    let secs = t.elapsed().as_secs_f64();
    s.write_all(b"k").await.expect("ack");
    let st = s.stats();
    println!(
        "mbps={:.1} events_sent={} events_received={} reads_that_waited={}",
        mbps(got - 1, secs),
        st.events_sent,
        st.events_received,
        st.rx.wakeups_requested
    );
}

fn unix() -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("p1.sock");
    let listener = UnixListener::bind(&path).expect("bind");
    let child = spawn("p1-unix-writer", &[(SOCK_ENV, path.display().to_string())]);
    let (mut s, _) = listener.accept().expect("accept");
    let mut buf = vec![0u8; CHUNK];
    s.read_exact(&mut buf[..1]).expect("first byte");
    let mut got = 1u64;
    let t = Instant::now();
    while got < TOTAL {
        let n = s.read(&mut buf).expect("read");
        assert!(n > 0, "early end of stream");
        got += n as u64;
    }
    let secs = t.elapsed().as_secs_f64();
    s.write_all(b"k").expect("ack");
    let out = child.wait_with_output().expect("writer");
    assert!(out.status.success(), "unix writer failed");
    mbps(got - 1, secs)
}

fn unix_writer() {
    let path = std::env::var(SOCK_ENV).expect("socket path");
    let mut s = UnixStream::connect(path).expect("connect");
    let buf = vec![0x5au8; CHUNK];
    let mut sent = 0u64;
    while sent < TOTAL {
        s.write_all(&buf).expect("write");
        sent += CHUNK as u64;
    }
    let mut ack = [0u8; 1];
    s.read_exact(&mut ack).expect("ack");
}

fn memcpy() -> f64 {
    let src = vec![0x5au8; CHUNK];
    let mut ring = vec![0u8; 1 << 20];
    let blocks = ring.len() / CHUNK;
    let t = Instant::now();
    let mut copied = 0u64;
    let mut i = 0;
    while copied < TOTAL {
        let at = (i % blocks) * CHUNK;
        ring[at..at + CHUNK].copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&mut ring);
        copied += CHUNK as u64;
        i += 1;
    }
    mbps(copied, t.elapsed().as_secs_f64())
}
