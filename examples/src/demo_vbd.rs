//! The block device part of the demo: a small raw image in the demo's
//! directory, a `vbd` device serving it (backend daemon in dom0), the
//! frontend daemon's NBD export of it (domU), data written through NBD,
//! flushed, read back and checked, and the image file checked too.
//!
//! ```text
//!   NbdClient --unix--> [frontend, domU: vbd-<devid>.sock] ==blkif== [backend, dom0] --> disk.img
//! ```

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use xenring_frontend::nbd::NbdClient;

use crate::system::System;

/// The image's size.
pub const IMAGE_BYTES: u64 = 64 << 20;
/// The device id (xl's number for `xvda`).
pub const DEVID: u32 = 51712;

fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(131) % 251) as u8 + 1
}

/// Runs the block device demo on `sys` with frontend domain `fe` (both
/// daemons already running and serving `vbd`), its image in `dir`;
/// returns the lines to print. The device is removed at the end.
pub async fn run_vbd_demo(sys: &System, fe: u16, dir: &Path) -> anyhow::Result<Vec<String>> {
    let image = dir.join("disk.img");
    std::fs::File::create(&image)?.set_len(IMAGE_BYTES)?;
    let t0 = Instant::now();
    let id = sys.add_vbd(fe, DEVID, &image, false).await?;
    sys.wait_connected(&id, Duration::from_secs(30)).await?;
    let setup = t0.elapsed();
    let sock = sys.vbd_socket(fe, DEVID);
    let mut client = None;
    for _ in 0..500 {
        if let Ok(c) = NbdClient::connect_unix(&sock).await {
            client = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let c = Arc::new(client.with_context(|| format!("no NBD export at {}", sock.display()))?);
    if c.size() != IMAGE_BYTES {
        bail!(
            "the export says {} bytes, the image has {IMAGE_BYTES}",
            c.size()
        );
    }

    // 1 MiB writes, 8 in flight, each a different pattern; then a flush.
    const CHUNK: u64 = 1 << 20;
    let n = IMAGE_BYTES / CHUNK;
    let t1 = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(8));
    let mut tasks = Vec::new();
    for i in 0..n {
        let (c, permit) = (c.clone(), sem.clone().acquire_owned().await?);
        tasks.push(tokio::spawn(async move {
            let r = c
                .write(i * CHUNK, &vec![pattern(i); CHUNK as usize], false)
                .await;
            drop(permit);
            r
        }));
    }
    for t in tasks {
        t.await??;
    }
    c.flush().await?;
    let write = t1.elapsed();

    let t2 = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..n {
        let (c, permit) = (c.clone(), sem.clone().acquire_owned().await?);
        tasks.push(tokio::spawn(async move {
            let r = c.read(i * CHUNK, CHUNK as u32).await;
            drop(permit);
            r.map(|d| d.iter().all(|&b| b == pattern(i)))
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        if !t.await?? {
            bail!("block demo: MiB {i} read back wrong through NBD");
        }
    }
    let read = t2.elapsed();
    Arc::try_unwrap(c)
        .map_err(|_| anyhow::anyhow!("client still shared"))?
        .disconnect()
        .await?;
    let f = std::fs::File::open(&image)?;
    let mut buf = vec![0u8; CHUNK as usize];
    for i in 0..n {
        f.read_exact_at(&mut buf, i * CHUNK)?;
        if buf.iter().any(|&b| b != pattern(i)) {
            bail!("block demo: MiB {i} of the image file is wrong");
        }
    }
    let (bs, fs) = sys.states(&id).await?;
    sys.remove(&id, Duration::from_secs(10)).await?;
    let mib = (IMAGE_BYTES >> 20) as f64;
    Ok(vec![
        format!(
            "  block: {id} {} / {} on {} ({} MiB raw image), NBD export {}, create->connected {:.1} ms",
            bs.name(),
            fs.name(),
            image.display(),
            IMAGE_BYTES >> 20,
            sock.display(),
            setup.as_secs_f64() * 1e3
        ),
        format!(
            "  block: wrote {mib:.0} MiB through NBD in 1 MiB requests (8 in flight) + flush: {:.0} MiB/s; read back {:.0} MiB/s; every byte checked through NBD and in the image file",
            mib / write.as_secs_f64(),
            mib / read.as_secs_f64()
        ),
    ])
}
