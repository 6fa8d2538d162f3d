//! The checksummed TCP scenario both receive modes run (vif_tcp_copy.rs,
//! vif_tcp_transfer.rs): ping both ways, then 256 MiB by TCP from the
//! frontend's namespace to the backend's and 32 MiB back, checksums
//! compared at both ends; afterwards no bad frame, no page out of the
//! receive pool, and the host reports nothing left behind.

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

/// Runs the scenario with the frontend's `rx-mode` set to `mode`.
pub async fn tcp_256_mib(mode: &str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = PathBuf::from(env!("CARGO_BIN_EXE_xenring-node"));
    let tool = Path::new(env!("CARGO_BIN_EXE_xenring-tcp"));
    let sys = System::start(dir.path(), node, HostConfig::default()).await?;
    let pair = start_vif(&sys, 1, 1500, Some(mode)).await?;
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
    let be = std::fs::read_to_string(dir.path().join("backend-dom0.out"))?;
    assert!(be.contains("bad frames 0"), "{be}");
    sys.wait_clean(Duration::from_secs(10)).await?;
    sys.shutdown();
    Ok(())
}
