//! A hostile vbd backend (this test, writing dom0's backend nodes by hand)
//! offers a disk of `u64::MAX` sectors: the byte size does not fit in 64
//! bits; or a `xenring-size-bytes` that does not round up to its
//! `sectors`. The frontend must refuse the device with an error node
//! naming the key and value, not wrap the size around (or panic) and
//! export it over NBD.

use std::path::PathBuf;
use std::time::Duration;

use xenring::abi::xenbus::XenbusState;
use xenring::sim::HostConfig;
use xenring::xenbus::{read_error, Side};
use xenring_examples::system::System;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_size_beyond_64_bits_fails_the_device() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let image = dir.path().join("disk.img");
    std::fs::write(&image, [0u8; 512])?;
    let node = PathBuf::from(env!("CARGO_BIN_EXE_xenring-node"));
    let sys = System::start(dir.path(), node, HostConfig::default()).await?;
    sys.create_domain(1)?;
    // No backend daemon: we are the backend.
    let frontend = sys.spawn_frontend(1, &["--devices", "vbd"])?;
    let cases: [(&str, &str, &str); 2] = [
        (&u64::MAX.to_string(), "", "sectors"),
        ("2", "5000", "xenring-size-bytes"),
    ];
    for (devid, (sectors, size_bytes, needle)) in cases.into_iter().enumerate() {
        let id = sys.add_vbd(1, devid as u32, &image, false).await?;
        let be = id.backend_dir();
        let mut keys = vec![
            ("sectors", sectors.to_string()),
            ("sector-size", "512".to_string()),
            ("info", "0".to_string()),
        ];
        if !size_bytes.is_empty() {
            keys.push(("xenring-size-bytes", size_bytes.to_string()));
        }
        keys.push(("state", (XenbusState::InitWait as u32).to_string()));
        for (k, v) in keys {
            sys.xs().write(&format!("{be}/{k}"), &v).await?;
        }
        // The frontend refuses the geometry and says why (bounded wait: on
        // the old code the device went on to Initialised and no error came).
        let mut err = None;
        for _ in 0..300 {
            if let Some(e) = read_error(sys.xs(), &id, Side::Frontend).await? {
                err = Some(e);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let Some(err) = err else {
            anyhow::bail!(
                "{needle}: no error node after 15 s; states {:?}\nfrontend log:\n{}",
                sys.states(&id).await?,
                frontend.log()
            );
        };
        let value = if size_bytes.is_empty() {
            sectors
        } else {
            size_bytes
        };
        assert!(
            err.contains(needle) && err.contains(value),
            "the error names the key and its value: {err:?}"
        );
        // Close our side so the toolstack's removal goes through.
        sys.xs()
            .write(
                &format!("{be}/state"),
                &(XenbusState::Closed as u32).to_string(),
            )
            .await?;
        sys.remove(&id, Duration::from_secs(10)).await?;
    }
    let mut frontend = frontend;
    assert!(frontend.running(), "the frontend daemon survived");
    assert!(frontend.terminate(Duration::from_secs(10))?.success());
    sys.wait_clean(Duration::from_secs(10)).await?;
    sys.shutdown();
    Ok(())
}
