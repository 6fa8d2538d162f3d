//! A server that accepts connections only to refuse them (an `ENOSPC`
//! error with request id 0, then close, as xenstored does for a domain
//! with too many connections): connecting fails naming the errno, and a
//! client whose connection was lost retries with a growing pause instead
//! of reconnecting in a loop.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::task::AbortHandle;
use xenring::abi::xs_wire::XsErrno;
use xenring::xenstore::{ClientOptions, Quotas, Xenstored, XsClient, XsMsg};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_a_connect_error_and_reconnects_back_off() {
    let dir = tempfile::tempdir().unwrap();
    let xsd = Xenstored::start(dir.path().join("xs"), Quotas::default()).unwrap();
    let real = xsd.socket_path(0).unwrap();
    let front = dir.path().join("front.sock");
    let listener = UnixListener::bind(&front).unwrap();
    let serve = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicUsize::new(0));
    let served: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
    {
        let (serve, accepted, served) = (serve.clone(), accepted.clone(), served.clone());
        tokio::spawn(async move {
            loop {
                let (mut a, _) = listener.accept().await.unwrap();
                accepted.fetch_add(1, Ordering::SeqCst);
                if serve.load(Ordering::SeqCst) {
                    let real = real.clone();
                    let h = tokio::spawn(async move {
                        let mut b = UnixStream::connect(&real).await.unwrap();
                        let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                    });
                    served.lock().unwrap().push(h.abort_handle());
                } else {
                    let _ = a
                        .write_all(&XsMsg::error(0, 0, XsErrno::Enospc).to_bytes())
                        .await;
                }
            }
        });
    }
    let opts = ClientOptions {
        timeout: Duration::from_secs(2),
        ..ClientOptions::default()
    };
    let e = XsClient::connect_with(&front, opts.clone())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("ENOSPC"), "{e}");

    serve.store(true, Ordering::SeqCst);
    let c = XsClient::connect_with(&front, opts).await.unwrap();
    c.write("/r/x", "1").await.unwrap();
    serve.store(false, Ordering::SeqCst);
    let before = accepted.load(Ordering::SeqCst);
    // Cut the client's own connection: it reconnects, and is refused.
    served.lock().unwrap()[0].abort();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let attempts = accepted.load(Ordering::SeqCst) - before;
    // With a pause doubling from 10 ms: about 8 attempts of two
    // connections each; in a loop, thousands.
    assert!(attempts > 0, "no reconnect");
    assert!(attempts <= 40, "{attempts} connections in 1.5 s");
    assert_eq!(c.reconnects(), 0);
    drop(xsd);
}
