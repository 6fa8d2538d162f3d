//! A vbd frontend with a small data-page pool (the frontend key
//! `pool-pages`, as on real Xen where gntalloc's grants are few): 1 MiB
//! and 3 MiB writes are split into requests that fit the pool, wait for
//! pages while others are in flight, and read back verified by qemu-io.
//! A `pool-pages` the frontend cannot use fails only that device, with an
//! error node naming the key.

mod vbd_common;

use std::time::Duration;

use vbd_common::{make_image, run, uri, Vbd};
use xenring::xenbus::{read_error, Side};

/// `log` without its colour escapes (`ESC [ ... m`).
fn plain(log: &str) -> String {
    let mut out = String::new();
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_pool_carries_big_requests_and_bad_sizes_are_refused() -> anyhow::Result<()> {
    let v = Vbd::start_with(16 << 20, false, &[("pool-pages", "24")]).await?;
    // The frontend logs its geometry as it connects, which may land in the
    // log file a moment after the device shows Connected.
    let mut log = plain(&v.frontend.log());
    for _ in 0..500 {
        if log.contains("pool_pages=") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        log = plain(&v.frontend.log());
    }
    assert!(
        log.contains("pool_pages=24") && log.contains("indirect=12"),
        "the frontend uses the small pool and requests that fit it twice:\n{log}"
    );
    let u = uri(&v.sock);
    let mut args: Vec<String> = vec!["-f".into(), "raw".into()];
    for (i, (off, len)) in [(0u64, 1u64 << 20), (1 << 20, 3 << 20), (5 << 20, 45056)]
        .into_iter()
        .enumerate()
    {
        let p = 0x31 + i;
        args.extend(["-c".into(), format!("aio_write -P {p} {off} {len}")]);
    }
    args.extend(["-c".into(), "aio_flush".into()]);
    for (i, (off, len)) in [(0u64, 1u64 << 20), (1 << 20, 3 << 20), (5 << 20, 45056)]
        .into_iter()
        .enumerate()
    {
        let p = 0x31 + i;
        args.extend(["-c".into(), format!("read -P {p} {off} {len}")]);
    }
    args.push(u);
    let out = run("qemu-io", &args).await?;
    assert!(!out.contains("Pattern verification failed"), "{out}");
    assert_eq!(
        out.matches("read ").count(),
        3,
        "three verified reads:\n{out}"
    );

    for (devid, bad) in [(1u32, "3"), (2, "lots")] {
        let image = v.dir.path().join(format!("bad-{devid}.img"));
        make_image(&image, 1 << 20)?;
        let id = v
            .sys
            .add_vbd_with(1, devid, &image, false, &[("pool-pages", bad)])
            .await?;
        // The frontend fails the device and says why in its error node.
        let mut err = String::new();
        for _ in 0..200 {
            if let Some(e) = read_error(v.sys.xs(), &id, Side::Frontend).await? {
                err = e;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            err.contains("pool-pages") && err.contains(bad),
            "pool-pages {bad}: error node says {err:?}\n{}",
            v.logs()
        );
        v.sys.remove(&id, Duration::from_secs(10)).await?;
    }
    v.finish().await
}
