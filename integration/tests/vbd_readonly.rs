//! A read-only image (`mode = r`): the backend publishes VDISK_READONLY,
//! the NBD export says NBD_FLAG_READ_ONLY, reads work, and every write
//! (NBD write, trim, write-zeroes; qemu-io write) fails with an error the
//! client sees; the image file is unchanged.

mod vbd_common;

use vbd_common::{run, run_status, uri, Vbd};
use xenring_frontend::nbd::proto::{EPERM, FLAG_READ_ONLY};
use xenring_frontend::nbd::{ClientError, NbdClient};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readonly_image_refuses_writes() -> anyhow::Result<()> {
    let v = Vbd::start(4 << 20, true).await?;
    let info = v
        .sys
        .xs()
        .read(&format!("{}/info", v.id.backend_dir()))
        .await?;
    assert_eq!(info, "4", "backend info key (VDISK_READONLY)");
    let before = std::fs::read(&v.image)?;

    let c = NbdClient::connect_unix(&v.sock).await?;
    assert_ne!(
        c.flags() & FLAG_READ_ONLY,
        0,
        "export flags {:#x}",
        c.flags()
    );
    assert_eq!(c.read(4096, 4096).await?, vec![0u8; 4096]);
    for r in [
        c.write(0, &[1u8; 4096], false).await,
        c.trim(0, 4096).await,
        c.write_zeroes(0, 4096).await,
    ] {
        assert!(matches!(r, Err(ClientError::Errno(EPERM))), "{r:?}");
    }
    c.disconnect().await?;

    let u = uri(&v.sock);
    let (ok, out) = run_status(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 7 0 4096", &u].map(String::from),
    )
    .await?;
    assert!(
        !ok || out.contains("failed"),
        "qemu-io write succeeded:\n{out}"
    );
    let lower = out.to_lowercase();
    assert!(
        lower.contains("permission denied")
            || lower.contains("read-only")
            || lower.contains("read only"),
        "qemu-io write error does not say why:\n{out}"
    );
    // Opened read-only on purpose: reads work, the write is refused.
    let (_, out) = run_status(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-r",
            "-c",
            "read -P 0 0 4096",
            "-c",
            "write -P 7 0 4096",
            &u,
        ]
        .map(String::from),
    )
    .await?;
    assert!(
        out.contains("read 4096/4096") && out.to_lowercase().contains("read-only"),
        "qemu-io -r:\n{out}"
    );
    run(
        "qemu-io",
        &["-f", "raw", "-r", "-c", "read -P 0 0 4M", &u].map(String::from),
    )
    .await?;
    assert_eq!(std::fs::read(&v.image)?, before, "the image changed");
    v.finish().await
}
