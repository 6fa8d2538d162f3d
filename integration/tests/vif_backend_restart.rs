//! kill -9 the vif backend daemon in the middle of a TCP transfer through
//! the device and start it again in its namespace: the frontend
//! reconnects, the new backend's TAP is addressed again (as a hotplug
//! script would; its MAC address is the same), and the transfer resumes
//! and completes with matching checksums at both ends; ping works again.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use xenring::abi::xenbus::XenbusState;
use xenring::sim::HostConfig;
use xenring_examples::demo_vif::{ping, start_vif, tcp_between, BACKEND_ADDR};
use xenring_examples::system::System;

const BYTES: u64 = 64 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_killed_mid_stream_and_restarted_traffic_resumes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = PathBuf::from(env!("CARGO_BIN_EXE_xenring-node"));
    let tool = PathBuf::from(env!("CARGO_BIN_EXE_xenring-tcp"));
    let sys = System::start(dir.path(), node, HostConfig::default()).await?;
    let mut pair = start_vif(&sys, 1, 1500, Some("transfer")).await?;

    // The transfer runs on its own thread; the backend dies under it once
    // data flows.
    let transfer = {
        let (be, fe) = (
            pair.backend_ns.name().to_string(),
            pair.frontend_ns.name().to_string(),
        );
        std::thread::spawn(move || tcp_between(&tool, &be, &fe, BACKEND_ADDR, 5001, BYTES))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while pair.backend_rx_bytes().unwrap_or(0) < 4 << 20 {
        anyhow::ensure!(
            std::time::Instant::now() < deadline && !transfer.is_finished(),
            "no data through the device\n{}",
            pair.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    pair.kill_backend().await?;
    assert!(!transfer.is_finished(), "the transfer was cut mid-stream");

    // The frontend notices (the rings' peer is gone) and waits for a
    // backend; the dead backend's node still says Connected.
    sys.wait_states(
        &pair.id,
        XenbusState::Connected,
        XenbusState::Initialising,
        Duration::from_secs(30),
    )
    .await
    .with_context(|| pair.logs())?;
    pair.respawn_backend(&sys)?;
    sys.wait_connected(&pair.id, Duration::from_secs(30))
        .await
        .with_context(|| pair.logs())?;
    pair.address_backend().await?;

    let (source, sink) = tokio::task::spawn_blocking(move || transfer.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the transfer thread panicked"))?
        .with_context(|| "the transfer across the restart")?;
    assert_eq!(source.bytes, BYTES);
    assert_eq!(sink.bytes, BYTES, "every byte arrived");
    assert_eq!(
        source.checksum, sink.checksum,
        "and they are the bytes sent"
    );
    let p = ping(&pair.frontend_ns, BACKEND_ADDR, 5, 0.05)?;
    assert_eq!(p.received, 5, "{p:?}");

    sys.remove(&pair.id, Duration::from_secs(10)).await?;
    let (f, b) = (pair.frontend, pair.backend);
    assert!(f.terminate(Duration::from_secs(10))?.success());
    assert!(b.terminate(Duration::from_secs(10))?.success());
    sys.wait_clean(Duration::from_secs(10)).await?;
    sys.shutdown();
    Ok(())
}
