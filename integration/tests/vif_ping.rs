//! The vif device between two network namespaces (backend daemon in one,
//! frontend daemon in the other, transfer mode): ping both ways (iputils'
//! ping and the demo's own), then the
//! device is removed and the host reports nothing left behind.

use std::path::PathBuf;
use std::time::Duration;

use xenring::sim::HostConfig;
use xenring_examples::demo_vif::{
    ping, start_vif, BACKEND_ADDR, BACKEND_IP, FRONTEND_ADDR, FRONTEND_IP,
};
use xenring_examples::ping::icmp_ping;
use xenring_examples::system::System;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_both_ways_through_the_split_driver() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = PathBuf::from(env!("CARGO_BIN_EXE_xenring-node"));
    let sys = System::start(dir.path(), node, HostConfig::default()).await?;
    let pair = start_vif(&sys, 1, 1500, None).await?;
    let logs = || pair.logs();
    let to_be = ping(&pair.frontend_ns, BACKEND_ADDR, 10, 0.05)
        .map_err(|e| anyhow::anyhow!("{e}\n{}", logs()))?;
    assert_eq!(to_be.received, 10, "every echo came back: {to_be:?}");
    let to_fe = ping(&pair.backend_ns, FRONTEND_ADDR, 10, 0.05)?;
    assert_eq!(to_fe.received, 10, "every echo came back: {to_fe:?}");
    // The demo's own ping (raw ICMP socket inside the namespace) sees the
    // same device answer.
    let gap = Duration::from_millis(20);
    let own = icmp_ping(&pair.frontend_ns, BACKEND_IP, 5, gap)?;
    assert_eq!((own.sent, own.received), (5, 5), "{own:?}");
    let own = icmp_ping(&pair.backend_ns, FRONTEND_IP, 5, gap)?;
    assert_eq!((own.sent, own.received), (5, 5), "{own:?}");
    // An address nobody has gets no reply, and says so.
    let none = icmp_ping(&pair.frontend_ns, "10.77.0.9".parse()?, 1, gap);
    assert!(none.is_err(), "{none:?}");
    assert!(
        pair.frontend.log().contains("vif connected") && pair.frontend.log().contains("transfer"),
        "transfer mode by default on the simulated host:\n{}",
        logs()
    );

    sys.remove(&pair.id, Duration::from_secs(10)).await?;
    let fe_out = {
        let f = pair.frontend;
        let b = pair.backend;
        assert!(f.terminate(Duration::from_secs(10))?.success());
        assert!(b.terminate(Duration::from_secs(10))?.success());
        std::fs::read_to_string(dir.path().join("frontend-dom1.out"))?
    };
    assert!(fe_out.contains("bad frames 0"), "{fe_out}");
    sys.wait_clean(Duration::from_secs(10)).await?;
    sys.shutdown();
    Ok(())
}
