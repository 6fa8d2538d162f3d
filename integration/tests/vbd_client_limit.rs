//! The vbd frontend's NBD export serves at most
//! `xenring_frontend::vbd::MAX_CLIENTS` clients at once (each bounded to
//! `nbd::MAX_INFLIGHT_BYTES` of request data): one more is closed at once,
//! and a client that leaves makes room. Before, connections were
//! unlimited, so many clients could each hold their share of memory.

mod vbd_common;

use vbd_common::Vbd;
use xenring_frontend::nbd::NbdClient;
use xenring_frontend::vbd::MAX_CLIENTS;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_over_the_limit_is_refused_and_a_leaving_one_makes_room() -> anyhow::Result<()> {
    let v = Vbd::start(1 << 20, false).await?;
    let mut clients = Vec::new();
    for i in 0..MAX_CLIENTS {
        let c = NbdClient::connect_unix(&v.sock)
            .await
            .map_err(|e| anyhow::anyhow!("client {i}: {e}\n{}", v.logs()))?;
        assert_eq!(c.size(), 1 << 20);
        clients.push(c);
    }
    let over = NbdClient::connect_unix(&v.sock).await;
    assert!(over.is_err(), "client {} was served", MAX_CLIENTS + 1);
    assert!(
        v.frontend.log().contains("nbd client refused"),
        "{}",
        v.logs()
    );
    // Everyone admitted still works.
    for c in &clients {
        c.write(0, b"x", false).await?;
    }
    clients.pop().unwrap().disconnect().await?;
    // The leaving client's place is taken once its connection has ended.
    let mut again = None;
    for _ in 0..200 {
        if let Ok(c) = NbdClient::connect_unix(&v.sock).await {
            again = Some(c);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let again = again.ok_or_else(|| anyhow::anyhow!("no room after a client left"))?;
    assert_eq!(again.read(0, 1).await?, b"x");
    again.disconnect().await?;
    for c in clients {
        c.disconnect().await?;
    }
    v.finish().await
}
