//! The client survives a xenstored restart: calls work again and a watch
//! set before the restart fires after it.

use std::time::Duration;

use futures::StreamExt;
use xenring::xenstore::{Quotas, Xenstored, XsClient, XsError};

async fn next(w: &mut xenring::xenstore::XsWatch) -> String {
    tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .expect("a watch event within 10 s")
        .expect("the watch stream ended")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reconnects_and_its_watch_fires_after_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let xsd = Xenstored::start(dir.path(), Quotas::default()).unwrap();
    let path = xsd.socket_path(0).unwrap();

    let c = XsClient::connect(&path).await.unwrap();
    c.write("/restart/w/before", "1").await.unwrap();
    let mut w = c.watch("/restart/w").await.unwrap();
    assert_eq!(next(&mut w).await, "/restart/w");

    // Restart: the old server goes away with its (in-memory) store.
    xsd.shutdown();
    let xsd = Xenstored::start(dir.path(), Quotas::default()).unwrap();
    assert_eq!(xsd.socket_path(0).unwrap(), path);

    // The client notices, reconnects and sets its watch again, which fires
    // once (as any new watch does).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while c.reconnects() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no reconnect within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(next(&mut w).await, "/restart/w");

    // A write after the restart fires the watch set before it.
    c.write("/restart/w/after", "2").await.unwrap();
    let ev = next(&mut w).await;
    assert!(ev == "/restart/w/after" || ev == "/restart/w", "{ev}");
    assert_eq!(c.read("/restart/w/after").await.unwrap(), "2");
    let gone: XsError = c.read("/restart/w/before").await.unwrap_err();
    assert!(gone.is_not_found(), "the new server starts empty: {gone}");
    drop(xsd);
}
