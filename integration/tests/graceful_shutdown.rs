//! SIGTERM closes a daemon's devices in order (Closing -> Closed) and the
//! daemon exits 0; the other end waits, and the device connects again when
//! the daemon comes back.

use std::path::PathBuf;
use std::time::Duration;

use xenring::abi::xenbus::XenbusState as S;
use xenring::sim::HostConfig;
use xenring_examples::system::{echo_server, push, System};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_devices_and_a_new_daemon_reconnects() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = PathBuf::from(env!("CARGO_BIN_EXE_xenring-node"));
    let sys = System::start(dir.path(), node, HostConfig::default()).await?;
    sys.create_domain(1)?;
    let (target, _echo) = echo_server().await?;
    let backend = sys.spawn_backend(0, &[])?;
    let frontend = sys.spawn_frontend(1, &[])?;
    let id = sys.add_chan(1, 0, &target).await?;
    sys.wait_connected(&id, Duration::from_secs(30)).await?;
    push(sys.chan_socket(1, 0), 0, 1 << 20).await?;

    // The backend stops: Closed; the frontend closes too and waits.
    let st = backend.terminate(Duration::from_secs(10))?;
    assert!(st.success(), "backend exit {st}");
    sys.wait_states(&id, S::Closed, S::Initialising, Duration::from_secs(10))
        .await?;
    let backend = sys.spawn_backend(0, &[])?;
    sys.wait_connected(&id, Duration::from_secs(30)).await?;
    push(sys.chan_socket(1, 0), 1, 1 << 20).await?;

    // The frontend stops: it closes, the backend follows to Closed.
    let st = frontend.terminate(Duration::from_secs(10))?;
    assert!(st.success(), "frontend exit {st}\n{}", backend.log());
    sys.wait_states(&id, S::Closed, S::Closed, Duration::from_secs(10))
        .await?;
    assert!(
        !sys.chan_socket(1, 0).exists(),
        "the frontend removes its socket"
    );
    let frontend = sys.spawn_frontend(1, &[])?;
    sys.wait_connected(&id, Duration::from_secs(30)).await?;
    push(sys.chan_socket(1, 0), 2, 1 << 20).await?;

    sys.remove(&id, Duration::from_secs(10)).await?;
    assert!(frontend.terminate(Duration::from_secs(10))?.success());
    assert!(backend.terminate(Duration::from_secs(10))?.success());
    sys.wait_clean(Duration::from_secs(10)).await?;
    sys.shutdown();
    Ok(())
}
