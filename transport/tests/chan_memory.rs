//! The memory a stalled channel holds is bounded by its window, whatever
//! the peer interleaves with it. The attack of the issue: one byte on a
//! channel nobody reads, then 60 KiB on a channel that is read at once,
//! again and again. When each DATA payload was a zero-copy slice of the
//! driver's 64 KiB read buffer, each unread byte kept a whole buffer alive
//! (1,000 rounds: about 64 MB for 1,000 unread bytes).
//!
//! Measured two ways: the growth of this process's resident memory (this
//! test is alone in its binary, so nothing else allocates meanwhile), with
//! a generous allowance for the allocator and the runtime; and the
//! channel's own account, [`Channel::rx_memory`], against its window plus
//! the documented [`RX_MEMORY_OVERHEAD`].

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xenring::chan::{Channel, Mux, MuxConfig, Role, DEFAULT_WINDOW, RX_MEMORY_OVERHEAD};

const ROUNDS: usize = 1000;
const BIG: usize = 60 << 10;
/// Growth beyond the stalled channel's window that the allocator, the
/// runtime and the drained channel may account for.
const SLACK: u64 = 16 << 20;

fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

/// `n` rounds: one byte on the stalled channel, `BIG` bytes through the
/// drained one (read at once).
async fn rounds(n: usize, stalled: &mut Channel, writer: &mut Channel, reader: &mut Channel) {
    let big = vec![0x5au8; BIG];
    let mut sink = vec![0u8; BIG];
    for _ in 0..n {
        stalled.write_all(&[1]).await.unwrap();
        stalled.flush().await.unwrap();
        writer.write_all(&big).await.unwrap();
        writer.flush().await.unwrap();
        reader.read_exact(&mut sink).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_channel_holds_no_more_than_its_window() {
    let guard = Duration::from_secs(120);
    let (a, b) = tokio::io::duplex(256 * 1024);
    let (client, _ci) = Mux::start(a, MuxConfig::new(Role::Client));
    let (_server, mut incoming) = Mux::start(b, MuxConfig::new(Role::Server));
    let mut stalled_w = client.open().await.unwrap();
    let stalled_r = incoming.accept().await.unwrap();
    let mut drained_w = client.open().await.unwrap();
    let mut drained_r = incoming.accept().await.unwrap();
    // Warm up (runtime, buffers), then measure.
    let (sw, dw, dr) = (&mut stalled_w, &mut drained_w, &mut drained_r);
    tokio::time::timeout(guard, rounds(20, sw, dw, dr))
        .await
        .expect("hang");
    let before = resident_bytes();
    tokio::time::timeout(guard, rounds(ROUNDS, sw, dw, dr))
        .await
        .expect("hang");
    let grown = resident_bytes().saturating_sub(before);
    let bound = u64::from(DEFAULT_WINDOW) + SLACK;
    assert!(
        grown <= bound,
        "{ROUNDS} unread bytes on a stalled channel grew this process by {grown} bytes \
         (bound: its window {DEFAULT_WINDOW} + {SLACK})"
    );
    // The channel's own account: its unread bytes plus the documented
    // overhead at most (the window bounds the unread bytes).
    let held = stalled_r.rx_memory();
    eprintln!("resident growth {grown} bytes; the stalled channel holds {held} bytes");
    assert!(
        held <= ROUNDS + RX_MEMORY_OVERHEAD && held <= DEFAULT_WINDOW as usize + RX_MEMORY_OVERHEAD,
        "the stalled channel holds {held} bytes for {ROUNDS} unread"
    );
    drop(stalled_r);
}
