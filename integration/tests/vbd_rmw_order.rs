//! Unaligned writes are read-modify-write in the vbd frontend; they must
//! not undo another client's acknowledged write of the same sector. One
//! NBD client writes sector 0 with a new pattern each round and reads it
//! back after the acknowledgement, while a second client keeps writing
//! one byte at offset 511 (the same sector) in one phase and zero-length
//! writes at offset 511 (which must be no-ops) in the other. A lost write
//! reads back an older round's pattern. Fixed rounds, no timing.

mod vbd_common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use vbd_common::Vbd;
use xenring_frontend::nbd::NbdClient;

const ROUNDS: u32 = 500;

/// Sector 0 of round `r`: bytes 0..511 say the round, byte 511 is the
/// other client's.
fn sector(r: u32) -> Vec<u8> {
    (0..512u32)
        .map(|i| (r.wrapping_mul(7) ^ i.wrapping_mul(13)) as u8 | 1)
        .collect()
}

/// Runs the rounds against a client writing `other_len` bytes at 511;
/// returns the rounds whose read-back was not what was acknowledged.
async fn rounds(v: &Vbd, other_len: usize) -> anyhow::Result<Vec<u32>> {
    let a = NbdClient::connect_unix(&v.sock).await?;
    let b = NbdClient::connect_unix(&v.sock).await?;
    let done = Arc::new(AtomicBool::new(false));
    let other = tokio::spawn({
        let done = done.clone();
        async move {
            let mut n = 0u64;
            while !done.load(Ordering::Relaxed) {
                b.write(511, &vec![0xee; other_len], false).await?;
                n += 1;
            }
            b.disconnect().await?;
            anyhow::Ok(n)
        }
    });
    let mut lost = Vec::new();
    for r in 0..ROUNDS {
        let want = sector(r);
        a.write(0, &want, false).await?;
        let got = a.read(0, 512).await?;
        if got[..511] != want[..511] {
            lost.push(r);
        }
    }
    done.store(true, Ordering::Relaxed);
    let writes = other.await??;
    assert!(writes > 0, "the other client wrote");
    a.disconnect().await?;
    Ok(lost)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unaligned_writes_never_undo_an_acknowledged_write() -> anyhow::Result<()> {
    let v = Vbd::start(1 << 20, false).await?;
    for other_len in [1usize, 0] {
        let lost = rounds(&v, other_len).await?;
        assert!(
            lost.is_empty(),
            "with {other_len}-byte writes at offset 511 beside it, {} of {ROUNDS} \
             acknowledged writes of sector 0 read back old data (rounds {:?}...)",
            lost.len(),
            &lost[..lost.len().min(10)]
        );
    }
    v.finish().await
}
