//! Removing a vbd device while an NBD client is connected: the client's
//! next request fails (ESHUTDOWN) instead of waiting forever, the socket
//! file goes, and everything is released.

mod vbd_common;

use std::time::Duration;

use vbd_common::Vbd;
use xenring_frontend::nbd::proto::ESHUTDOWN;
use xenring_frontend::nbd::{ClientError, NbdClient};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removal_fails_the_connected_clients_requests() -> anyhow::Result<()> {
    let mut v = Vbd::start(8 << 20, false).await?;
    let c = NbdClient::connect_unix(&v.sock).await?;
    c.write(0, &[3u8; 4096], false).await?;
    v.sys.remove(&v.id, Duration::from_secs(10)).await?;
    let r = tokio::time::timeout(Duration::from_secs(30), c.read(0, 4096)).await?;
    assert!(
        matches!(
            r,
            Err(ClientError::Errno(ESHUTDOWN)) | Err(ClientError::Io(_))
        ),
        "a request after the removal: {r:?}"
    );
    for _ in 0..500 {
        if !v.sock.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!v.sock.exists(), "the socket outlived the device");
    drop(c);
    assert!(v.frontend.terminate(Duration::from_secs(10))?.success());
    let b = v.backend.take().expect("backend");
    assert!(b.terminate(Duration::from_secs(10))?.success());
    v.sys.wait_clean(Duration::from_secs(10)).await?;
    v.sys.shutdown();
    Ok(())
}
