//! NBD conformance of the vbd export with real clients, and devices that
//! fail their setup:
//! - an export name that is not the export's is refused (`qemu-img info`
//!   of `nbd+unix:///nosuch` fails naming it; the default name works);
//! - an image of 1000 bytes is exported as 1000 bytes (`nbdinfo --size`;
//!   qemu rounds sizes up to 512), `qemu-io` writes and reads back its
//!   last partial sector, I/O past the end is refused to the byte, and
//!   the file stays 1000 bytes with the data;
//! - a device whose setup fails (a bad `pool-pages`, a non-loopback
//!   `nbd-tcp`) reports the error and leaves no NBD socket file.
//!
//! One test function runs the scenarios in turn: a process holds one
//! simulated host at a time (its XenStore path is in the environment).

mod vbd_common;

use std::path::PathBuf;
use std::time::Duration;

use vbd_common::{make_image, run, run_status, uri, Vbd};
use xenring::sim::HostConfig;
use xenring::xenbus::{read_error, Side};
use xenring_examples::system::System;
use xenring_frontend::nbd::proto::{EINVAL, ENOSPC};
use xenring_frontend::nbd::{ClientError, NbdClient};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vbd_conformance() -> anyhow::Result<()> {
    unknown_export_name_is_refused().await?;
    an_odd_sized_image_is_exported_to_the_byte().await?;
    a_device_that_fails_setup_leaves_no_socket().await
}

async fn unknown_export_name_is_refused() -> anyhow::Result<()> {
    let v = Vbd::start(1 << 20, false).await?;
    let bad = format!("nbd+unix:///nosuch?socket={}", v.sock.display());
    let (ok, out) = run_status("qemu-img", &["info".into(), "--output=json".into(), bad]).await?;
    assert!(!ok, "qemu-img opened export \"nosuch\":\n{out}");
    assert!(
        out.contains("nosuch"),
        "the refusal does not name the export:\n{out}"
    );
    // The default export is still served on the same socket.
    let info = run(
        "qemu-img",
        &["info".into(), "--output=json".into(), uri(&v.sock)],
    )
    .await?;
    assert!(info.contains("\"virtual-size\": 1048576"), "{info}");
    v.finish().await
}

async fn an_odd_sized_image_is_exported_to_the_byte() -> anyhow::Result<()> {
    let v = Vbd::start(1000, false).await?;
    std::fs::write(&v.image, vec![1u8; 1000])?;
    let u = uri(&v.sock);
    // qemu rounds every size up to 512 bytes; nbdinfo shows the export's.
    let size = run("nbdinfo", &["--size".into(), u.clone()]).await?;
    assert_eq!(size.trim(), "1000", "nbdinfo --size");
    let q = |cmd: &str| ["-f", "raw", "-c", cmd, &u].map(String::from);
    run("qemu-io", &q("write -P 5 900 100")).await?;
    run("qemu-io", &q("write -P 6 500 20")).await?;
    let out = run("qemu-io", &q("read -P 5 900 100")).await?;
    assert!(out.contains("read 100/100"), "{out}");
    let out = run("qemu-io", &q("read -P 6 500 20")).await?;
    assert!(out.contains("read 20/20"), "{out}");
    // Past the end, to the byte: refused.
    let c = NbdClient::connect_unix(&v.sock).await?;
    assert_eq!(c.size(), 1000);
    assert_eq!(c.read(999, 1).await?, vec![5]);
    assert!(matches!(
        c.read(999, 2).await,
        Err(ClientError::Errno(EINVAL))
    ));
    assert!(matches!(
        c.write(1000, &[7], false).await,
        Err(ClientError::Errno(ENOSPC))
    ));
    assert!(matches!(
        c.write(990, &[7; 11], false).await,
        Err(ClientError::Errno(ENOSPC))
    ));
    c.write(999, &[8], true).await?;
    c.write_zeroes(996, 3).await?;
    c.disconnect().await?;
    let data = std::fs::read(&v.image)?;
    assert_eq!(data.len(), 1000, "the image changed size");
    assert!(data[..500].iter().all(|&b| b == 1), "{:?}", &data[..500]);
    assert!(data[500..520].iter().all(|&b| b == 6));
    assert!(data[520..900].iter().all(|&b| b == 1));
    assert!(data[900..996].iter().all(|&b| b == 5));
    assert_eq!(data[996..], [0, 0, 0, 8]);
    v.finish().await
}

async fn a_device_that_fails_setup_leaves_no_socket() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let image = dir.path().join("disk.img");
    make_image(&image, 1 << 20)?;
    let node = PathBuf::from(env!("CARGO_BIN_EXE_xenring-node"));
    let sys = System::start(dir.path(), node, HostConfig::default()).await?;
    sys.create_domain(1)?;
    let backend = sys.spawn_backend(0, &["--devices", "vbd"])?;
    let frontend = sys.spawn_frontend(1, &["--devices", "vbd"])?;
    let cases: [(&str, &str, &str); 2] = [
        ("pool-pages", "1", "pool-pages"),
        ("nbd-tcp", "192.0.2.1:10809", "loopback"),
    ];
    for (devid, (key, value, needle)) in cases.into_iter().enumerate() {
        let devid = devid as u32;
        let id = sys
            .add_vbd_with(1, devid, &image, false, &[(key, value)])
            .await?;
        let mut err = None;
        for _ in 0..1000 {
            err = read_error(sys.xs(), &id, Side::Frontend).await?;
            if err.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let err =
            err.unwrap_or_else(|| panic!("{key} = {value}: no error node\n{}", frontend.log()));
        assert!(
            err.contains(needle),
            "{key} = {value}: error node says {err:?}"
        );
        let sock = sys.vbd_socket(1, devid);
        assert!(
            !sock.exists(),
            "{key} = {value}: the failed device left its socket {}",
            sock.display()
        );
        sys.remove(&id, Duration::from_secs(10)).await?;
    }
    assert!(frontend.terminate(Duration::from_secs(10))?.success());
    assert!(backend.terminate(Duration::from_secs(10))?.success());
    sys.wait_clean(Duration::from_secs(10)).await?;
    sys.shutdown();
    Ok(())
}
