//! Destroy the frontend's domain while its device is connected: the
//! backend daemon releases everything it held (the simulated host reports
//! no leak) and removes the device's backend nodes; it keeps serving other
//! domains.

use std::path::PathBuf;
use std::time::Duration;

use xenring::sim::HostConfig;
use xenring_examples::system::{echo_server, push, System};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_releases_everything_when_the_frontend_domain_dies() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = PathBuf::from(env!("CARGO_BIN_EXE_xenring-node"));
    let sys = System::start(dir.path(), node, HostConfig::default()).await?;
    sys.create_domain(1)?;
    sys.create_domain(2)?;
    let (target, _echo) = echo_server().await?;
    let backend = sys.spawn_backend(0, &[])?;
    let fe1 = sys.spawn_frontend(1, &[])?;
    let fe2 = sys.spawn_frontend(2, &[])?;
    let other = sys.add_chan(2, 0, &target).await?;
    sys.wait_connected(&other, Duration::from_secs(30)).await?;
    // What dom0 holds for the other domain's device alone.
    let dom0 = |r: &xenring::sim::HostReport| {
        r.domains
            .iter()
            .find(|d| d.domid == 0)
            .map(|d| (d.mappings, d.mapped_pages, d.ports, d.notifies))
    };
    let baseline = dom0(&sys.report());
    let doomed = sys.add_chan(1, 0, &target).await?;
    sys.wait_connected(&doomed, Duration::from_secs(30)).await?;
    assert_ne!(
        dom0(&sys.report()),
        baseline,
        "the doomed device maps pages too"
    );
    push(sys.chan_socket(1, 0), 0, 1 << 20).await?;

    sys.destroy_domain(1)?;
    drop(fe1); // its process is gone with its domain's resources; reap it
               // The backend notices (@releaseDomain) and removes the device.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while sys
        .xs()
        .read_opt(&format!("{}/state", doomed.backend_dir()))
        .await?
        .is_some()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "backend nodes still there:\n{}",
            backend.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Domain 1 is reaped once nobody maps its pages, and dom0 holds only
    // what the other device needs.
    loop {
        let r = sys.report();
        if r.domains.iter().all(|d| d.domid != 1) && dom0(&r) == baseline {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the backend still holds domain 1's resources:\n  {}\nbackend:\n{}",
            r.leaks().join("\n  "),
            backend.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The other domain's device still works.
    push(sys.chan_socket(2, 0), 1, 1 << 20).await?;
    sys.remove(&other, Duration::from_secs(10)).await?;
    assert!(fe2.terminate(Duration::from_secs(10))?.success());
    assert!(backend.terminate(Duration::from_secs(10))?.success());
    sys.wait_clean(Duration::from_secs(10)).await?;
    sys.shutdown();
    Ok(())
}
