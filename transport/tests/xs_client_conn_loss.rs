//! The client survives the loss of its connection (the server lives on),
//! again and again: calls work again and its watches keep firing. A proxy
//! between client and server cuts the connection.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::task::AbortHandle;
use xenring::abi::xs_wire::XsType;
use xenring::xenstore::conn::XsConn;
use xenring::xenstore::{ClientOptions, Quotas, Xenstored, XsClient, XsMsg, XsWatch};

/// Forwards each connection to the server; remembers them in order.
struct Proxy {
    conns: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Proxy {
    fn start(listen: &Path, target: PathBuf) -> Proxy {
        let l = UnixListener::bind(listen).unwrap();
        let conns: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let c = conns.clone();
        tokio::spawn(async move {
            loop {
                let (mut a, _) = l.accept().await.unwrap();
                let target = target.clone();
                let h = tokio::spawn(async move {
                    let mut b = UnixStream::connect(&target).await.unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                });
                c.lock().unwrap().push(h.abort_handle());
            }
        });
        Proxy { conns }
    }

    fn count(&self) -> usize {
        self.conns.lock().unwrap().len()
    }

    /// Cuts connection `i` (in the order they were opened).
    fn cut(&self, i: usize) {
        self.conns.lock().unwrap()[i].abort();
    }
}

/// Waits for an event on exactly `path` (re-arming a watch adds one for
/// the watched path; skipped).
async fn event_on(w: &mut XsWatch, path: &str) {
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(20), w.next())
            .await
            .unwrap_or_else(|_| panic!("no event on {path} within 20 s"))
            .expect("the watch stream ended");
        if ev == path {
            return;
        }
    }
}

async fn write(other: &XsConn, path: &str, value: &str) {
    let m = XsMsg::with_strings(
        XsType::Write,
        0,
        0,
        &[path.as_bytes(), value.as_bytes()],
        false,
    )
    .unwrap();
    let r = other.request(m).await.unwrap();
    assert_eq!(r.error_name(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_is_replaced_and_watches_keep_firing() {
    let dir = tempfile::tempdir().unwrap();
    let xsd = Xenstored::start(dir.path().join("xs"), Quotas::default()).unwrap();
    let real = xsd.socket_path(0).unwrap();
    let proxied = dir.path().join("proxy.sock");
    let proxy = Proxy::start(&proxied, real.clone());
    let c = XsClient::connect_with(
        &proxied,
        ClientOptions {
            timeout: Duration::from_secs(2),
            ..ClientOptions::default()
        },
    )
    .await
    .unwrap();
    // Another dom0 client, straight to the server.
    let other = XsConn::connect(&real, None).await.unwrap();
    assert_eq!(proxy.count(), 1, "the client's one connection");

    let mut w = c.watch("/loss/w").await.unwrap();
    event_on(&mut w, "/loss/w").await;
    write(&other, "/loss/w/a", "1").await;
    event_on(&mut w, "/loss/w/a").await;

    // The client's connection, twice (each reconnect opens a new one).
    for round in 0..2 {
        let before = c.reconnects();
        let n = proxy.count();
        assert_eq!(n, round + 1, "one connection per reconnect");
        proxy.cut(n - 1);
        // Calls work again (at most one timeout later).
        c.write("/loss/x", &round.to_string()).await.unwrap();
        assert_eq!(c.read("/loss/x").await.unwrap(), round.to_string());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while c.reconnects() == before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "round {round}: no reconnect"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The watch hears of a write by someone else.
        let node = format!("/loss/w/after{round}");
        write(&other, &node, "1").await;
        event_on(&mut w, &node).await;
    }
    // A watch dropped is removed from the server.
    drop(w);
    let mut w2 = c.watch("/loss/w2").await.unwrap();
    event_on(&mut w2, "/loss/w2").await;
    drop(xsd);
}
