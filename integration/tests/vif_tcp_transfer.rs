//! Ping both ways, then 256 MiB by TCP through the vif device in transfer
//! mode (the receive pool's accept-transfer slots) from the frontend's
//! namespace to the backend's and 32 MiB back, checksums compared at both
//! ends; afterwards the host reports nothing left behind.

use std::path::{Path, PathBuf};
use std::time::Duration;

use xenring::sim::HostConfig;
use xenring_examples::demo_vif::{ping, start_vif, tcp_between, BACKEND_ADDR, FRONTEND_ADDR};
use xenring_examples::demo_vif::{tcp_transfer, TcpResult};
use xenring_examples::system::System;

const BYTES: u64 = 256 << 20;
const BACK: u64 = 32 << 20;

fn check(what: &str, bytes: u64, (source, sink): (TcpResult, TcpResult)) {
    assert_eq!(source.bytes, bytes, "{what}: bytes sent");
    assert_eq!(sink.bytes, bytes, "{what}: bytes received");
    assert_eq!(source.checksum, sink.checksum, "{what}: checksums");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_256_mib_in_transfer_mode() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = PathBuf::from(env!("CARGO_BIN_EXE_xenring-node"));
    let tool = Path::new(env!("CARGO_BIN_EXE_xenring-tcp"));
    let sys = System::start(dir.path(), node, HostConfig::default()).await?;
    let pair = start_vif(&sys, 1, 1500, Some("transfer")).await?;
    // Ping both ways in this mode first.
    let p = ping(&pair.frontend_ns, BACKEND_ADDR, 5, 0.05)?;
    assert_eq!(p.received, 5, "{p:?}");
    let p = ping(&pair.backend_ns, FRONTEND_ADDR, 5, 0.05)?;
    assert_eq!(p.received, 5, "{p:?}");
    let r = tcp_transfer(tool, &pair, 5001, BYTES)
        .map_err(|e| anyhow::anyhow!("{e}\n{}", pair.logs()))?;
    check("frontend to backend", BYTES, r);
    let r = tcp_between(
        tool,
        pair.frontend_ns.name(),
        pair.backend_ns.name(),
        FRONTEND_ADDR,
        5002,
        BACK,
    )?;
    check("backend to frontend", BACK, r);

    sys.remove(&pair.id, Duration::from_secs(10)).await?;
    let (f, b) = (pair.frontend, pair.backend);
    assert!(f.terminate(Duration::from_secs(10))?.success());
    assert!(b.terminate(Duration::from_secs(10))?.success());
    let out = std::fs::read_to_string(dir.path().join("frontend-dom1.out"))?;
    assert!(out.contains("bad frames 0"), "{out}");
    assert!(out.contains("pages-out 0"), "{out}");
    sys.wait_clean(Duration::from_secs(10)).await?;
    sys.shutdown();
    Ok(())
}
