//! A frontend that writes bad nodes (missing ring-ref, garbage
//! event-channel, unknown protocol) makes that device fail with an error
//! node and close, while a good device on the same backend daemon keeps
//! working.

use std::path::PathBuf;
use std::time::Duration;

use xenring::abi::xenbus::XenbusState;
use xenring::sim::HostConfig;
use xenring::xenbus::{read_error, Side};
use xenring_examples::system::{echo_server, push, System};

/// A case: what is wrong, the frontend keys written, what the error names.
type Case = (
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static str,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_nodes_fail_only_their_device() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = PathBuf::from(env!("CARGO_BIN_EXE_xenring-node"));
    let sys = System::start(dir.path(), node, HostConfig::default()).await?;
    sys.create_domain(1)?;
    // Domain 2 has no frontend daemon: this test writes its nodes, badly.
    sys.create_domain(2)?;
    let (target, _echo) = echo_server().await?;
    let backend = sys.spawn_backend(0, &[])?;
    let frontend = sys.spawn_frontend(1, &[])?;
    let good = sys.add_chan(1, 0, &target).await?;
    sys.wait_connected(&good, Duration::from_secs(30)).await?;

    let cases: [Case; 3] = [
        ("missing ring-ref", &[("event-channel", "5")], "ring-ref"),
        (
            "garbage event-channel",
            &[("ring-ref", "8"), ("event-channel", "eleven")],
            "event-channel",
        ),
        (
            "unknown protocol",
            &[
                ("ring-ref", "8"),
                ("event-channel", "5"),
                ("protocol", "pdp11-abi"),
            ],
            "protocol",
        ),
    ];
    for (devid, (what, keys, needle)) in cases.iter().enumerate() {
        let id = sys.add_chan(2, devid as u32, &target).await?;
        sys.wait_states(
            &id,
            XenbusState::InitWait,
            XenbusState::Initialising,
            Duration::from_secs(10),
        )
        .await?;
        for (k, v) in keys.iter() {
            sys.xs()
                .write(&format!("{}/{k}", id.frontend_dir()), v)
                .await?;
        }
        sys.xs()
            .write(&format!("{}/state", id.frontend_dir()), "3")
            .await?;
        sys.wait_states(
            &id,
            XenbusState::Closed,
            XenbusState::Initialised,
            Duration::from_secs(10),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{what}: {e}\nbackend:\n{}", backend.log()))?;
        let err = read_error(sys.xs(), &id, Side::Backend)
            .await?
            .unwrap_or_default();
        assert!(err.contains(needle), "{what}: error node says {err:?}");
        // The good device is untouched and still carries data.
        assert_eq!(
            sys.states(&good).await?,
            (XenbusState::Connected, XenbusState::Connected)
        );
        push(sys.chan_socket(1, 0), devid, 256 << 10).await?;
    }
    for devid in 0..3 {
        let id = xenring::xenbus::DeviceId {
            kind: "chan".into(),
            frontend: 2,
            backend: 0,
            devid,
        };
        sys.remove(&id, Duration::from_secs(10)).await?;
    }
    sys.remove(&good, Duration::from_secs(10)).await?;
    assert!(frontend.terminate(Duration::from_secs(10))?.success());
    assert!(backend.terminate(Duration::from_secs(10))?.success());
    sys.wait_clean(Duration::from_secs(10)).await?;
    sys.shutdown();
    Ok(())
}
