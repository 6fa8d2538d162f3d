//! Benchmarks of the simulated host, side by side in one run:
//!
//! * event-channel round trip between two domain processes, against a
//!   Unix-socket ping-pong between two processes (blocking, and on tokio as
//!   the event channels are);
//! * map + unmap of granted pages, per page, for batches of 1, 16 and 256,
//!   against a bare mmap + munmap of a memfd page (the floor).
//!
//! `cargo bench -p xenring --bench sim` prints a table and writes JSON to
//! `target/xenring-bench/sim.json`. The child processes are this binary
//! again, told their role by `XENRING_BENCH_ROLE`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use xenring::platform::{Access, Platform};
use xenring::shm::{memfd, Protection, Region, PAGE_SIZE};
use xenring::sim::selftest::{self, Offer};
use xenring::sim::{HostConfig, SimDomain, SimHost, ENV_DOMID, ENV_SOCKET};

/// The helpers the benchmark programs share (machine name, child spawning).
#[path = "transport/common.rs"]
#[allow(dead_code)]
mod common;

use common::{machine, spawn, ROLE};
const ROUNDS: u32 = 100_000;
const WARMUP: u32 = 5_000;

fn main() {
    if let Ok(role) = std::env::var(ROLE) {
        child(&role);
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return; // cargo bench --list
    }
    let dir = std::env::temp_dir().join(format!("xenring-bench-{}", std::process::id()));
    // Private (mode 0700): the sim host refuses a socket folder others can reach.
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(&dir)
        .unwrap();
    let machine = machine();
    println!("xenring sim benchmarks on {machine}");

    let evt = event_round_trip(&dir);
    let unix_blocking = unix_round_trip(&dir, "unix-blocking");
    let unix_tokio = unix_round_trip(&dir, "unix-tokio");
    println!("\nround trip between two processes ({ROUNDS} rounds after {WARMUP} warm-up):");
    println!("  {:<40} {:>10}", "transport", "mean us");
    println!(
        "  {:<40} {:>10.2}",
        "xenring sim event channel (tokio)",
        us(evt)
    );
    println!(
        "  {:<40} {:>10.2}",
        "Unix socket, blocking read/write",
        us(unix_blocking)
    );
    println!("  {:<40} {:>10.2}", "Unix socket, tokio", us(unix_tokio));
    println!(
        "  ratio event channel / Unix socket: {:.2} (blocking), {:.2} (tokio)",
        evt.as_secs_f64() / unix_blocking.as_secs_f64(),
        evt.as_secs_f64() / unix_tokio.as_secs_f64()
    );

    let floor = mmap_floor();
    let maps: Vec<(usize, Duration)> = [1usize, 16, 256]
        .iter()
        .map(|b| (*b, map_unmap(&dir, *b)))
        .collect();
    println!("\nmap + unmap per page:");
    println!(
        "  {:<40} {:>10.2} us",
        "bare mmap+munmap of a memfd page",
        us(floor)
    );
    for (b, d) in &maps {
        println!(
            "  {:<40} {:>10.2} us",
            format!("sim grant map+unmap, batch of {b}"),
            us(*d)
        );
    }

    let json = format!(
        "{{\n  \"machine\": {machine:?},\n  \"rounds\": {ROUNDS},\n  \"event_round_trip_us\": {:.3},\n  \"unix_blocking_round_trip_us\": {:.3},\n  \"unix_tokio_round_trip_us\": {:.3},\n  \"mmap_munmap_page_us\": {:.3},\n  \"map_unmap_per_page_us\": {{{}}}\n}}\n",
        us(evt),
        us(unix_blocking),
        us(unix_tokio),
        us(floor),
        maps.iter().map(|(b, d)| format!("\"{b}\": {:.3}", us(*d))).collect::<Vec<_>>().join(", ")
    );
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/xenring-bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("sim.json"), json).unwrap();
    println!("\nwritten to {}", out.join("sim.json").display());
    let _ = std::fs::remove_dir_all(dir);
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn last_ns(out: std::process::Output) -> Duration {
    assert!(out.status.success(), "a benchmark child failed");
    let text = String::from_utf8_lossy(&out.stdout);
    let ns: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("elapsed_ns="))
        .unwrap_or_else(|| panic!("no timing in {text:?}"))
        .parse()
        .unwrap();
    Duration::from_nanos(ns)
}

/// Two domain processes ping-pong through event channels; the mapper times
/// `ROUNDS` round trips after a warm-up.
fn event_round_trip(dir: &Path) -> Duration {
    let host = SimHost::start(dir.join("control.sock"), HostConfig::default()).unwrap();
    let socket = host.control_path().display().to_string();
    let env = |d: u16| vec![(ENV_SOCKET, socket.clone()), (ENV_DOMID, d.to_string())];
    let mut sharer = spawn("sharer", &env(1));
    let mut line = String::new();
    let mut out = BufReader::new(sharer.stdout.take().unwrap());
    out.read_line(&mut line).unwrap();
    let mut e0 = env(0);
    e0.push(("XENRING_BENCH_OFFER", line.trim().to_string()));
    let mapper = spawn("mapper", &e0);
    let d = last_ns(mapper.wait_with_output().unwrap());
    assert!(sharer.wait().unwrap().success());
    drop(out);
    host.report().assert_clean();
    d / ROUNDS
}

fn unix_round_trip(dir: &Path, kind: &str) -> Duration {
    let path = dir.join(format!("{kind}.sock"));
    let listener = UnixListener::bind(&path).unwrap();
    drop(listener); // the pong child binds it again
    let _ = std::fs::remove_file(&path);
    let env = vec![("XENRING_BENCH_PATH", path.display().to_string())];
    let mut pong = spawn(&format!("{kind}-pong"), &env);
    let mut ready = String::new();
    let mut out = BufReader::new(pong.stdout.take().unwrap());
    out.read_line(&mut ready).unwrap();
    let ping = spawn(&format!("{kind}-ping"), &env);
    let d = last_ns(ping.wait_with_output().unwrap());
    assert!(pong.wait().unwrap().success());
    d / ROUNDS
}

fn mmap_floor() -> Duration {
    let fd = memfd("bench", PAGE_SIZE as u64 * 64).unwrap();
    let n = 20_000;
    let start = Instant::now();
    for i in 0..n {
        let r =
            Region::map_pages_of(fd.as_fd(), &[(i % 64) as u64], Protection::ReadWrite).unwrap();
        std::hint::black_box(&r);
    }
    start.elapsed() / n
}

fn map_unmap(dir: &Path, batch: usize) -> Duration {
    let host = SimHost::start(dir.join(format!("map{batch}.sock")), HostConfig::default()).unwrap();
    let d0 = SimDomain::connect(host.control_path(), 0).unwrap();
    let d1 = SimDomain::connect(host.control_path(), 1).unwrap();
    let share = d1.share_pages(0, batch, Access::ReadWrite).unwrap();
    let iters = (20_000 / batch).max(200);
    for _ in 0..iters / 10 {
        drop(d0.map_grants(1, share.refs(), Access::ReadWrite).unwrap());
    }
    let start = Instant::now();
    for _ in 0..iters {
        let m = d0.map_grants(1, share.refs(), Access::ReadWrite).unwrap();
        m.unmap().unwrap();
    }
    let per_page = start.elapsed() / (iters * batch) as u32;
    drop(share);
    drop((d0, d1));
    per_page
}

// ------------------------------------------------------------ child roles

fn child(role: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let path = || PathBuf::from(std::env::var("XENRING_BENCH_PATH").unwrap());
    let report = |d: Duration| {
        let mut o = std::io::stdout();
        let _ = writeln!(o, "elapsed_ns={}", d.as_nanos());
    };
    match role {
        "sharer" => {
            let dom = SimDomain::from_env().unwrap();
            let (offer, st) = selftest::sharer_start(&dom, 0, 1).unwrap();
            println!("{offer}");
            rt.block_on(selftest::sharer_finish(st, WARMUP + ROUNDS))
                .unwrap();
        }
        "mapper" => {
            let dom = SimDomain::from_env().unwrap();
            let offer: Offer = std::env::var("XENRING_BENCH_OFFER")
                .unwrap()
                .parse()
                .unwrap();
            // The mapper drives the rounds; time only those after the warm-up.
            let map = dom
                .map_grants(offer.domid, &offer.refs, Access::ReadWrite)
                .unwrap();
            let port = dom.bind_interdomain(offer.domid, offer.port).unwrap();
            map.memory().write(2048, b"domain 0000/p000");
            let d = rt.block_on(async {
                for _ in 0..WARMUP {
                    port.notify().unwrap();
                    port.wait().await.unwrap();
                }
                let start = Instant::now();
                for _ in 0..ROUNDS {
                    port.notify().unwrap();
                    port.wait().await.unwrap();
                }
                start.elapsed()
            });
            map.unmap().unwrap();
            port.notify().unwrap();
            port.close().unwrap();
            report(d);
        }
        "unix-blocking-pong" => {
            let l = UnixListener::bind(path()).unwrap();
            println!("ready");
            let (mut s, _) = l.accept().unwrap();
            let mut b = [0u8; 1];
            for _ in 0..WARMUP + ROUNDS {
                s.read_exact(&mut b).unwrap();
                s.write_all(&b).unwrap();
            }
        }
        "unix-blocking-ping" => {
            let mut s = UnixStream::connect(path()).unwrap();
            let mut b = [7u8; 1];
            for _ in 0..WARMUP {
                s.write_all(&b).unwrap();
                s.read_exact(&mut b).unwrap();
            }
            let start = Instant::now();
            for _ in 0..ROUNDS {
                s.write_all(&b).unwrap();
                s.read_exact(&mut b).unwrap();
            }
            report(start.elapsed());
        }
        "unix-tokio-pong" => rt.block_on(async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let l = tokio::net::UnixListener::bind(path()).unwrap();
            println!("ready");
            let (mut s, _) = l.accept().await.unwrap();
            let mut b = [0u8; 1];
            for _ in 0..WARMUP + ROUNDS {
                s.read_exact(&mut b).await.unwrap();
                s.write_all(&b).await.unwrap();
            }
        }),
        "unix-tokio-ping" => rt.block_on(async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::UnixStream::connect(path()).await.unwrap();
            let mut b = [7u8; 1];
            for _ in 0..WARMUP {
                s.write_all(&b).await.unwrap();
                s.read_exact(&mut b).await.unwrap();
            }
            let start = Instant::now();
            for _ in 0..ROUNDS {
                s.write_all(&b).await.unwrap();
                s.read_exact(&mut b).await.unwrap();
            }
            report(start.elapsed());
        }),
        other => panic!("unknown role {other}"),
    }
}
