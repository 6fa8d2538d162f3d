//! A backend daemon whose XenStore watch lags (a queue of one event, so
//! bursts coalesce into one event for the watched directory, as a slow
//! daemon's do, and as a watch set again after a reconnect fires once for
//! it) still hears every device's removal when 16 are removed at once.
//!
//! A guard: it passed before the daemon's fix too (the frontend's own
//! reaction to a removal reaches the backend through the peer's state).
//! The defect it guards against was seen on real Xen (a backend stuck
//! Connected for 30 s after its device was removed, while its frontend
//! reconnected): an event for the watched directory itself only looked for
//! new devices, so a removal coalesced into it never reached the device.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use xenring::sim::{HostConfig, SimDomain};
use xenring::xenstore::{ClientOptions, XsClient};
use xenring_backend::chan::ChanBackend;
use xenring_backend::device::{daemon, BackendDevice};
use xenring_examples::system::{echo_server, System};

const DEVICES: u32 = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_watch_still_delivers_every_removal() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = PathBuf::from(env!("CARGO_BIN_EXE_xenring-node"));
    let sys = System::start(dir.path(), node, HostConfig::default()).await?;
    sys.create_domain(1)?;
    let (target, _echo) = echo_server().await?;
    // The backend daemon in this process, as dom0, with a one-event watch
    // queue.
    let xs = XsClient::connect_with(
        sys.host().xenstore_path(0)?,
        ClientOptions {
            watch_queue: 1,
            ..ClientOptions::default()
        },
    )
    .await?;
    let platform = Arc::new(SimDomain::connect(sys.host().control_path(), 0)?);
    let devices: Vec<Arc<dyn BackendDevice>> = vec![Arc::new(ChanBackend::new())];
    let be = daemon(xs, platform, devices);
    let stop = CancellationToken::new();
    let run = tokio::spawn({
        let stop = stop.clone();
        async move { be.run(stop).await }
    });
    let frontend = sys.spawn_frontend(1, &[])?;
    let mut ids = Vec::new();
    for devid in 0..DEVICES {
        ids.push(sys.add_chan(1, devid, &target).await?);
    }
    for id in &ids {
        sys.wait_connected(id, Duration::from_secs(60))
            .await
            .map_err(|e| anyhow::anyhow!("{e}\nfrontend:\n{}", frontend.log()))?;
    }
    // All removals at once: their events come in bursts.
    let removals: Vec<_> = ids
        .iter()
        .map(|id| sys.remove(id, Duration::from_secs(20)))
        .collect();
    for r in futures::future::join_all(removals).await {
        r?;
    }
    assert!(xenring::xenbus::list_devices(sys.xs()).await?.is_empty());
    stop.cancel();
    run.await??;
    assert!(frontend.terminate(Duration::from_secs(10))?.success());
    sys.wait_clean(Duration::from_secs(10)).await?;
    sys.shutdown();
    Ok(())
}
