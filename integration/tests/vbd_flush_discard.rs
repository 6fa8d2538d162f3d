//! Flush and discard reach the image file: NBD flushes (and FUA writes)
//! become `fdatasync`s in the backend (its counters say so), discards
//! (`NBD_CMD_TRIM` from our client and `qemu-io discard`) punch holes in
//! the file (its allocated blocks drop and the range reads as zeroes),
//! and `NBD_CMD_WRITE_ZEROES` (`qemu-io write -z`) zeroes data.

mod vbd_common;

use std::os::unix::fs::{FileExt, MetadataExt};
use std::time::Duration;

use vbd_common::{run, uri, Vbd};
use xenring_frontend::nbd::NbdClient;

const MIB: u64 = 1 << 20;

fn blocks(p: &std::path::Path) -> u64 {
    std::fs::metadata(p).map(|m| m.blocks()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_and_discard_reach_the_image() -> anyhow::Result<()> {
    let mut v = Vbd::start(32 * MIB, false).await?;
    let c = NbdClient::connect_unix(&v.sock).await?;
    assert_eq!(c.size(), 32 * MIB);
    let data = vec![0x5au8; MIB as usize];
    for i in 0..16 {
        c.write(i * MIB, &data, i == 15).await?;
    }
    c.flush().await?;
    let full = blocks(&v.image);
    assert!(
        full >= 16 * MIB / 512,
        "16 MiB written, {full} blocks allocated"
    );

    // Trim 4 MiB (plus unaligned edges that must be left alone).
    c.trim(2 * MIB - 100, (4 * MIB + 200) as u32).await?;
    let after = blocks(&v.image);
    assert!(
        after + 4 * MIB / 512 <= full,
        "trim of 4 MiB freed {} blocks of 512 bytes",
        full - after
    );
    let f = std::fs::File::open(&v.image)?;
    let mut buf = vec![1u8; (4 * MIB) as usize];
    f.read_exact_at(&mut buf, 2 * MIB)?;
    assert!(
        buf.iter().all(|&b| b == 0),
        "the trimmed range reads as zeroes"
    );
    let edge = c.read(2 * MIB - 100, 100).await?;
    assert!(
        edge.iter().all(|&b| b == 0x5a),
        "bytes before the trim kept"
    );

    // qemu-io: discard and write -z, then verify through NBD.
    let u = uri(&v.sock);
    let out = run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "discard 8M 4M",
            "-c",
            "write -z 12M 1M",
            "-c",
            "read -P 0 8M 5M",
            "-c",
            "read -P 0x5a 13M 3M",
            "-c",
            "flush",
            &u,
        ]
        .map(String::from),
    )
    .await?;
    assert!(!out.contains("failed"), "qemu-io:\n{out}");
    let last = blocks(&v.image);
    assert!(
        last + 4 * MIB / 512 <= after,
        "qemu-io discard freed {} blocks",
        after - last
    );
    c.disconnect().await?;

    // The backend's counters: every flush and FUA became an fdatasync.
    let backend = v.backend.take().expect("backend");
    let out_path = backend.log_path().with_extension("out");
    assert!(backend.terminate(Duration::from_secs(10))?.success());
    let summary = std::fs::read_to_string(&out_path)?;
    let line = summary
        .lines()
        .find(|l| l.starts_with("vbd "))
        .unwrap_or_default();
    let count = |key: &str| -> u64 {
        let mut it = line.split_whitespace();
        while let Some(w) = it.next() {
            if w == key {
                return it.next().and_then(|n| n.parse().ok()).unwrap_or(0);
            }
        }
        0
    };
    assert!(count("flushes") >= 3, "backend summary: {line}");
    assert!(count("discards") >= 2, "backend summary: {line}");
    v.finish().await
}
