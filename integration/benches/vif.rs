//! The network split driver against what a user would use instead on one
//! host (issue 7): TCP throughput and ping latency between two network
//! namespaces through the `vif` device (transfer mode and copy mode, the
//! daemons as child processes on the simulated host) and through a veth
//! pair between two other namespaces, side by side in one run.
//!
//! `cargo bench -p xenring-integration --bench vif` prints the table with
//! ratios to veth and the machine. Needs root, `ip` and `ping`. Knobs:
//! `XENRING_BENCH_TCP_MIB` (per run, default 256), `XENRING_BENCH_RUNS`
//! (default 3; the median is reported), `XENRING_BENCH_PINGS` (default
//! 500). No figure is asserted; every run checks its checksums, and the
//! vif setups end with the host reporting nothing left behind.

#[allow(dead_code)]
#[path = "../../transport/benches/transport/common.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::machine;
use xenring::sim::HostConfig;
use xenring_examples::demo_vif::{
    ping, start_vif, tcp_between, NetNs, PingStats, BACKEND_ADDR, FRONTEND_ADDR,
};
use xenring_examples::system::System;

fn env_or(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One setup's figures.
#[derive(Debug, Clone, Copy)]
struct Figures {
    /// Median TCP throughput, frontend side to backend side, MiB/s.
    tcp_up: f64,
    /// The same the other way.
    tcp_down: f64,
    /// Ping round trip (frontend side to backend side), average ms.
    ping: PingStats,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Throughput both ways and ping between namespaces `a` (the frontend
/// side, address `a_addr`) and `b` (`b_addr`).
fn measure(tool: &Path, a: &NetNs, b: &NetNs, a_addr: &str, b_addr: &str) -> Figures {
    let bytes = env_or("XENRING_BENCH_TCP_MIB", 256) << 20;
    let runs = env_or("XENRING_BENCH_RUNS", 3).max(1);
    let pings = env_or("XENRING_BENCH_PINGS", 500) as u32;
    let mut port = 6000;
    let mut rate = |to: &NetNs, from: &NetNs, addr: &str, n: u64| -> f64 {
        port += 1;
        let (src, sink) =
            tcp_between(tool, to.name(), from.name(), addr, port, n).expect("tcp transfer");
        assert_eq!(src.checksum, sink.checksum, "checksums");
        assert_eq!(sink.bytes, n, "bytes");
        (n as f64 / (1 << 20) as f64) / sink.secs
    };
    // Warm up (ARP, TCP windows, page cache of the binaries).
    rate(b, a, b_addr, 16 << 20);
    let up = median((0..runs).map(|_| rate(b, a, b_addr, bytes)).collect());
    let down = median((0..runs).map(|_| rate(a, b, a_addr, bytes)).collect());
    let ping = ping(a, b_addr, pings, 0.002).expect("ping");
    Figures {
        tcp_up: up,
        tcp_down: down,
        ping,
    }
}

async fn vif(node: &Path, tool: &Path, mode: &str) -> Figures {
    let dir = tempfile::tempdir().expect("temp dir");
    let sys = System::start(dir.path(), node.to_path_buf(), HostConfig::default())
        .await
        .expect("sim host");
    let pair = start_vif(&sys, 1, 1500, Some(mode)).await.expect("vif");
    let f = measure(
        tool,
        &pair.frontend_ns,
        &pair.backend_ns,
        FRONTEND_ADDR,
        BACKEND_ADDR,
    );
    sys.remove(&pair.id, Duration::from_secs(10))
        .await
        .expect("remove");
    let (fe, be) = (pair.frontend, pair.backend);
    fe.terminate(Duration::from_secs(10))
        .expect("frontend exit");
    be.terminate(Duration::from_secs(10)).expect("backend exit");
    sys.wait_clean(Duration::from_secs(10))
        .await
        .expect("clean");
    sys.shutdown();
    f
}

fn veth(tool: &Path) -> Figures {
    let a = NetNs::create("xrva").expect("netns");
    let b = NetNs::create("xrvb").expect("netns");
    a.ip(&[
        "link",
        "add",
        "va",
        "mtu",
        "1500",
        "type",
        "veth",
        "peer",
        "name",
        "vb",
        "netns",
        b.name(),
    ])
    .expect("veth pair");
    b.ip(&["link", "set", "vb", "mtu", "1500"]).expect("mtu");
    a.addr("va", &format!("{FRONTEND_ADDR}/24")).expect("addr");
    b.addr("vb", &format!("{BACKEND_ADDR}/24")).expect("addr");
    measure(tool, &a, &b, FRONTEND_ADDR, BACKEND_ADDR)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("vif: bench");
        return;
    }
    let node = PathBuf::from(env!("CARGO_BIN_EXE_xenring-node"));
    let tool = PathBuf::from(env!("CARGO_BIN_EXE_xenring-tcp"));
    let rows = [
        ("vif, transfer mode", vif(&node, &tool, "transfer").await),
        ("vif, copy mode", vif(&node, &tool, "copy").await),
        ("veth pair", veth(&tool)),
    ];
    let base = rows[2].1;
    println!("vif bench: {}", machine());
    println!(
        "  TCP {} MiB per run, median of {}; ping: {} echoes 2 ms apart; MTU 1500",
        env_or("XENRING_BENCH_TCP_MIB", 256),
        env_or("XENRING_BENCH_RUNS", 3),
        env_or("XENRING_BENCH_PINGS", 500)
    );
    println!(
        "  {:<20} {:>14} {:>8} {:>16} {:>8} {:>14} {:>8}",
        "setup",
        "TCP fe->be MiB/s",
        "x veth",
        "TCP be->fe MiB/s",
        "x veth",
        "ping avg ms",
        "x veth"
    );
    for (name, f) in rows {
        println!(
            "  {:<20} {:>14.1} {:>8.3} {:>16.1} {:>8.3} {:>14.3} {:>8.1}",
            name,
            f.tcp_up,
            f.tcp_up / base.tcp_up,
            f.tcp_down,
            f.tcp_down / base.tcp_down,
            f.ping.avg_ms,
            f.ping.avg_ms / base.ping.avg_ms
        );
    }
}
