//! One process speaks for two domains at once, each client on its own
//! socket, and after a xenstored restart each reconnects to its own
//! socket (issue: the client read `XENSTORED_PATH` at every connect, so a
//! program had to change the process-wide variable between connects, and
//! a reconnect could reach the other domain's socket).

use std::time::Duration;

use xenring::xenstore::codec::XsErrno;
use xenring::xenstore::{Quotas, Xenstored, XsClient};

/// Who the client speaks for, as the server sees it: dom0 may write
/// anywhere, domain 1 only below its home.
async fn speaks_for(c: &XsClient) -> u16 {
    match c.write("/dom0-only", "x").await {
        Ok(()) => 0,
        Err(e) if e.errno() == Some(XsErrno::Eacces) => {
            c.write("/local/domain/1/mine", "x").await.unwrap();
            1
        }
        Err(e) => panic!("unexpected error: {e}"),
    }
}

async fn until_reconnected(c: &XsClient, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while c.reconnects() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: no reconnect within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn start(dir: &std::path::Path) -> Xenstored {
    let xsd = Xenstored::start(dir, Quotas::default()).unwrap();
    xsd.introduce_domain(1);
    xsd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_domains_in_one_process_each_on_its_own_socket_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let xsd = start(dir.path());
    let (p0, p1) = (xsd.socket_path(0).unwrap(), xsd.socket_path(1).unwrap());
    let dom0 = XsClient::connect(&p0).await.unwrap();
    let dom1 = XsClient::connect(&p1).await.unwrap();
    assert_eq!(dom0.path(), p0);
    assert_eq!(dom1.path(), p1);
    // The home must exist for domain 1 to write in it.
    dom0.mkdir("/local/domain/1").await.unwrap();
    dom0.set_perms("/local/domain/1", &["n1".parse().unwrap()])
        .await
        .unwrap();
    assert_eq!(speaks_for(&dom0).await, 0);
    assert_eq!(speaks_for(&dom1).await, 1);

    // Restart: both lose their connections and come back, each to its
    // own domain's socket.
    xsd.shutdown();
    let xsd = start(dir.path());
    assert_eq!(xsd.socket_path(1).unwrap(), p1);
    until_reconnected(&dom0, "dom0").await;
    until_reconnected(&dom1, "domain 1").await;
    dom0.mkdir("/local/domain/1").await.unwrap();
    dom0.set_perms("/local/domain/1", &["n1".parse().unwrap()])
        .await
        .unwrap();
    assert_eq!(
        speaks_for(&dom1).await,
        1,
        "domain 1's client after the restart"
    );
    assert_eq!(
        speaks_for(&dom0).await,
        0,
        "dom0's client after the restart"
    );
    drop(xsd);
}
