//! The embedded xenstored measured with xenstore-rs as the client, and the
//! same through xenring's hardened client (`XsClient`), in one run:
//!
//! * READ and WRITE round trips per second, one at a time;
//! * READ throughput with 16 requests in flight;
//! * watch-event latency: from the start of a WRITE to the event's arrival
//!   at another connection's watch.
//!
//! `cargo bench -p xenring --bench xenstore`; JSON in
//! `target/xenring-bench/xenstore.json`. (The C xenstored needs a real
//! hypervisor; the comparison with it runs in the Xen VM, a later issue.)

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt;
use xenring::xenstore::{Quotas, Xenstored, XsClient, ENV_XENSTORED_PATH};
use xenstore_rs::tokio::XsTokio;
use xenstore_rs::{AsyncWatch, AsyncXs};

/// The helpers the benchmark programs share (machine name).
#[path = "transport/common.rs"]
#[allow(dead_code)]
mod common;

const N: u32 = 20_000;
const WATCH_N: u32 = 2_000;

fn rate(n: u32, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let xsd = Xenstored::start(dir.path(), Quotas::default()).unwrap();
    // xenstore-rs's own connection finds its socket only in the
    // environment (set here while the bench has one thread).
    std::env::set_var(ENV_XENSTORED_PATH, xsd.socket_path(0).unwrap());
    let rs = XsTokio::new().await.unwrap();
    let ours = XsClient::connect(xsd.socket_path(0).unwrap())
        .await
        .unwrap();
    rs.write("/bench/r", "some value of moderate length")
        .await
        .unwrap();

    let mut rows: Vec<(String, f64)> = Vec::new();

    let t = Instant::now();
    for _ in 0..N {
        rs.read("/bench/r").await.unwrap();
    }
    rows.push((
        "read, xenstore-rs, 1 in flight (ops/s)".into(),
        rate(N, t.elapsed()),
    ));
    let t = Instant::now();
    for _ in 0..N {
        ours.read("/bench/r").await.unwrap();
    }
    rows.push((
        "read, XsClient, 1 in flight (ops/s)".into(),
        rate(N, t.elapsed()),
    ));
    let t = Instant::now();
    for i in 0..N {
        rs.write("/bench/w", &i.to_string()).await.unwrap();
    }
    rows.push((
        "write, xenstore-rs, 1 in flight (ops/s)".into(),
        rate(N, t.elapsed()),
    ));
    let t = Instant::now();
    for i in 0..N {
        ours.write("/bench/w", &i.to_string()).await.unwrap();
    }
    rows.push((
        "write, XsClient, 1 in flight (ops/s)".into(),
        rate(N, t.elapsed()),
    ));

    let t = Instant::now();
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let rs = rs.clone();
            tokio::spawn(async move {
                for _ in 0..N / 16 {
                    rs.read("/bench/r").await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    rows.push((
        "read, xenstore-rs, 16 in flight (ops/s)".into(),
        rate(N / 16 * 16, t.elapsed()),
    ));

    // Watch latency: a second connection watches, the first writes.
    let watcher = XsTokio::new().await.unwrap();
    let mut w = watcher.watch("/bench/watch").await.unwrap();
    w.next().await.unwrap(); // the event every new watch fires
    let mut lat = Vec::with_capacity(WATCH_N as usize);
    for i in 0..WATCH_N {
        let t = Instant::now();
        rs.write("/bench/watch/x", &i.to_string()).await.unwrap();
        w.next().await.unwrap();
        lat.push(t.elapsed());
    }
    lat.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let p50 = lat[lat.len() / 2];
    let p99 = lat[lat.len() * 99 / 100];
    let mean = lat.iter().sum::<Duration>() / WATCH_N;

    let machine = common::machine();
    println!("embedded xenstored benchmarks on {machine}");
    for (name, v) in &rows {
        println!("  {name:<45} {v:>10.0}");
    }
    println!(
        "  watch event latency (write start -> event): mean {:.1} us, p50 {:.1} us, p99 {:.1} us",
        us(mean),
        us(p50),
        us(p99)
    );
    let json = format!(
        "{{\n  \"machine\": {machine:?},\n{}  \"watch_latency_us\": {{\"mean\": {:.2}, \"p50\": {:.2}, \"p99\": {:.2}}}\n}}\n",
        rows.iter().map(|(n, v)| format!("  {n:?}: {v:.0},\n")).collect::<String>(),
        us(mean),
        us(p50),
        us(p99)
    );
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/xenring-bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("xenstore.json"), json).unwrap();
    drop((w, watcher, ours, rs));
    xsd.shutdown();
}
