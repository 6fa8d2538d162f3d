//! A backend whose `features()` refuses the device (a chan with a target
//! that does not parse) fails it at once: error node, Closed, and it never
//! publishes InitWait, so the frontend never starts connecting and writes
//! no second, misleading error of its own. (It used to go on to InitWait
//! after writing its error: the frontend then failed on the missing
//! feature keys.)

use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use xenring::abi::xenbus::XenbusState;
use xenring::sim::HostConfig;
use xenring::xenbus::{read_error, Side};
use xenring_examples::system::System;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_device_never_reaches_init_wait() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = PathBuf::from(env!("CARGO_BIN_EXE_xenring-node"));
    let sys = System::start(dir.path(), node, HostConfig::default()).await?;
    sys.create_domain(1)?;
    let backend = sys.spawn_backend(0, &[])?;
    let frontend = sys.spawn_frontend(1, &[])?;
    // Every value the backend's state takes, from before the device exists
    // (a watch may coalesce two changes, but a value written and kept for
    // the frontend to see is read at least once).
    let state = "/local/domain/0/backend/chan/1/0/state";
    let mut w = sys.xs().watch(state).await?;
    let xs = sys.xs().clone();
    let seen = tokio::spawn(async move {
        let mut seen = Vec::new();
        while w.next().await.is_some() {
            if let Ok(Some(v)) = xs.read_opt(state).await {
                if seen.last() != Some(&v) {
                    seen.push(v.clone());
                }
                if v == "6" {
                    break;
                }
            }
        }
        seen
    });
    let id = sys.add_chan(1, 0, "no-such-scheme:x").await?;
    let seen = tokio::time::timeout(Duration::from_secs(30), seen).await??;
    let be_err = read_error(sys.xs(), &id, Side::Backend)
        .await?
        .unwrap_or_default();
    assert!(
        be_err.contains("no-such-scheme:x"),
        "backend error names the target: {be_err:?}\n{}",
        backend.log()
    );
    assert!(
        !seen.contains(&XenbusState::InitWait.raw().to_string()),
        "the backend published InitWait for a device it refused: states {seen:?}"
    );
    // The frontend stays out of it: no error of its own.
    sys.wait_states(
        &id,
        XenbusState::Closed,
        XenbusState::Initialising,
        Duration::from_secs(10),
    )
    .await?;
    let fe_err = read_error(sys.xs(), &id, Side::Frontend).await?;
    assert_eq!(fe_err, None, "frontend log:\n{}", frontend.log());
    Ok(())
}
