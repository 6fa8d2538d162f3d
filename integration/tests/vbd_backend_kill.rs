//! kill -9 the backend daemon during a stream of writes from an NBD
//! client we control: every write acknowledged before the kill is in the
//! image file while the backend is dead; after a restart the NBD
//! connection carries on (the frontend resends what was lost with the
//! rings), every write is acknowledged, and all of them are in the file.

mod vbd_common;

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use vbd_common::Vbd;
use xenring_frontend::nbd::NbdClient;

const WRITES: usize = 2048;
const LEN: usize = 32 << 10;
const IN_FLIGHT: usize = 16;

fn pattern(i: usize) -> u8 {
    (i % 251) as u8 + 1
}

fn check_file(path: &std::path::Path, acked: &[bool]) -> anyhow::Result<usize> {
    let f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; LEN];
    let mut n = 0;
    for (i, &a) in acked.iter().enumerate() {
        if !a {
            continue;
        }
        f.read_exact_at(&mut buf, (i * LEN) as u64)?;
        anyhow::ensure!(
            buf.iter().all(|&b| b == pattern(i)),
            "write {i} was acknowledged but is not in the image"
        );
        n += 1;
    }
    Ok(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_backend_kill9() -> anyhow::Result<()> {
    let mut v = Vbd::start((WRITES * LEN) as u64, false).await?;
    let c = Arc::new(NbdClient::connect_unix(&v.sock).await?);
    let acked = Arc::new(Mutex::new(vec![false; WRITES]));
    let count = Arc::new(AtomicUsize::new(0));
    let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let writer = {
        let (c, acked, count) = (c.clone(), acked.clone(), count.clone());
        tokio::spawn(async move {
            let mut tasks = Vec::new();
            for i in 0..WRITES {
                let permit = slots.clone().acquire_owned().await.expect("open");
                let (c, acked, count) = (c.clone(), acked.clone(), count.clone());
                tasks.push(tokio::spawn(async move {
                    let data = vec![pattern(i); LEN];
                    let r = c.write((i * LEN) as u64, &data, false).await;
                    if r.is_ok() {
                        acked.lock().unwrap()[i] = true;
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    drop(permit);
                    r
                }));
            }
            for t in tasks {
                t.await??;
            }
            anyhow::Ok(())
        })
    };
    while count.load(Ordering::Relaxed) < WRITES / 8 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    v.backend.take().expect("backend").kill9()?;
    // Let acknowledgements that were already on their way arrive; nothing
    // new can be acknowledged while the backend is dead.
    let mut last = usize::MAX;
    while count.load(Ordering::Relaxed) != last {
        last = count.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let snapshot = acked.lock().unwrap().clone();
    let n = check_file(&v.image, &snapshot)?;
    assert!(
        (WRITES / 8..WRITES).contains(&n),
        "{n} writes acknowledged before the kill"
    );

    v.backend = Some(v.sys.spawn_backend(0, &["--devices", "vbd"])?);
    tokio::time::timeout(Duration::from_secs(60), writer)
        .await
        .with_context(|| format!("writes hang after the restart\n{}", v.logs()))??
        .with_context(|| format!("a write failed\n{}", v.logs()))?;
    let all = acked.lock().unwrap().clone();
    assert!(
        all.iter().all(|&a| a),
        "every write acknowledged in the end"
    );
    assert_eq!(check_file(&v.image, &all)?, WRITES);
    // And read back through the whole path.
    for i in (0..WRITES).step_by(97) {
        let got = c.read((i * LEN) as u64, LEN as u32).await?;
        assert!(
            got.iter().all(|&b| b == pattern(i)),
            "read back of write {i}"
        );
    }
    Arc::try_unwrap(c).expect("one client").disconnect().await?;
    v.finish().await
}
