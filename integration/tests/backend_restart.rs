//! kill -9 the backend daemon in the middle of a transfer, start it again:
//! the frontend reconnects by itself and the next transfer succeeds.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use xenring::abi::xenbus::XenbusState;
use xenring::sim::HostConfig;
use xenring_examples::system::{echo_server, push, System};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_killed_mid_transfer_and_restarted() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = PathBuf::from(env!("CARGO_BIN_EXE_xenring-node"));
    let sys = System::start(dir.path(), node, HostConfig::default()).await?;
    sys.create_domain(1)?;
    let (target, _echo) = echo_server().await?;
    let backend = sys.spawn_backend(0, &[])?;
    let frontend = sys.spawn_frontend(1, &[])?;
    let id = sys.add_chan(1, 0, &target).await?;
    sys.wait_connected(&id, Duration::from_secs(30)).await?;
    let sock = sys.chan_socket(1, 0);
    push(sock.clone(), 0, 1 << 20)
        .await
        .context("first transfer")?;

    // A big transfer; the backend dies under it.
    let big = tokio::spawn(push(sock.clone(), 1, 1 << 30));
    tokio::time::sleep(Duration::from_millis(300)).await;
    backend.kill9()?;
    let r = tokio::time::timeout(Duration::from_secs(30), big)
        .await
        .context("the cut transfer hangs")?
        .context("the cut transfer's task")?;
    assert!(
        r.is_err(),
        "a transfer cut by the backend's death must fail, not hang or succeed"
    );

    // The frontend notices on its own (the ring's peer is gone) and waits
    // for a backend; the dead backend's node still says Connected.
    sys.wait_states(
        &id,
        XenbusState::Connected,
        XenbusState::Initialising,
        Duration::from_secs(30),
    )
    .await
    .with_context(|| format!("frontend noticing the death\nfrontend:\n{}", frontend.log()))?;
    let backend = sys.spawn_backend(0, &[])?;
    sys.wait_connected(&id, Duration::from_secs(30))
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "{e}\nbackend:\n{}\nfrontend:\n{}",
                backend.log(),
                frontend.log()
            )
        })?;
    push(sock.clone(), 2, 8 << 20).await.with_context(|| {
        format!(
            "transfer after the restart\nbackend:\n{}\nfrontend:\n{}",
            backend.log(),
            frontend.log()
        )
    })?;

    sys.remove(&id, Duration::from_secs(10)).await?;
    assert!(frontend.terminate(Duration::from_secs(10))?.success());
    assert!(backend.terminate(Duration::from_secs(10))?.success());
    sys.wait_clean(Duration::from_secs(10)).await?;
    sys.shutdown();
    Ok(())
}
