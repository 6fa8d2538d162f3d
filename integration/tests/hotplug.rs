//! Hot-plug 64 chan devices on one backend daemon (and one frontend
//! daemon), see each reach Connected and carry data, remove them all, and
//! check the simulated host is left clean.

use std::path::PathBuf;
use std::time::Duration;

use xenring::sim::HostConfig;
use xenring_examples::system::{echo_server, push, System};

const DEVICES: u32 = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hotplug_64_devices_and_remove_them() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = PathBuf::from(env!("CARGO_BIN_EXE_xenring-node"));
    let sys = System::start(dir.path(), node, HostConfig::default()).await?;
    sys.create_domain(1)?;
    let (target, _echo) = echo_server().await?;
    let backend = sys.spawn_backend(0, &[])?;
    let frontend = sys.spawn_frontend(1, &[])?;
    let mut ids = Vec::new();
    for devid in 0..DEVICES {
        ids.push(sys.add_chan(1, devid, &target).await?);
    }
    for id in &ids {
        sys.wait_connected(id, Duration::from_secs(60))
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "{e}\nbackend:\n{}\nfrontend:\n{}",
                    backend.log(),
                    frontend.log()
                )
            })?;
    }
    // Every device carries its own data.
    let mut tasks = Vec::new();
    for id in &ids {
        tasks.push(tokio::spawn(push(
            sys.chan_socket(1, id.devid),
            id.devid as usize,
            64 << 10,
        )));
    }
    for t in tasks {
        t.await??;
    }
    let listed = xenring::xenbus::list_devices(sys.xs()).await?;
    assert_eq!(listed.len(), DEVICES as usize, "{listed:?}");
    for id in &ids {
        sys.remove(id, Duration::from_secs(20)).await?;
    }
    assert!(xenring::xenbus::list_devices(sys.xs()).await?.is_empty());
    // The daemons keep running with no devices, and stop cleanly.
    assert!(frontend.terminate(Duration::from_secs(10))?.success());
    assert!(backend.terminate(Duration::from_secs(10))?.success());
    sys.wait_clean(Duration::from_secs(10)).await?;
    sys.shutdown();
    Ok(())
}
