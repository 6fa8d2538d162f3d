//! The hardened XenStore client against the embedded xenstored, as dom0.
//!
//! xenstore-rs reads its socket from `XENSTORED_PATH` when it connects, so
//! this test binary starts one xenstored and sets the variable once, before
//! any client exists.
//!
//! With `XENRING_TEST_XENSTORED=PATH` the same tests run against the
//! xenstored listening there instead (the real-Xen VM runs this binary in
//! dom0 against C xenstored and oxenstored, skipping
//! `a_domu_socket_gets_eacces_naming_the_path`, which needs a second
//! domain's socket).

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use futures::StreamExt;
use xenring::xenstore::{ClientOptions, Perm, PermAccess, Quotas, Xenstored, XsClient, XsError};

struct Fixture {
    _dir: Option<tempfile::TempDir>,
    _xsd: Option<Xenstored>,
    dom0: PathBuf,
    dom1: PathBuf,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        if let Some(external) = std::env::var_os("XENRING_TEST_XENSTORED") {
            return Fixture {
                _dir: None,
                _xsd: None,
                dom0: PathBuf::from(external),
                dom1: PathBuf::from("/nonexistent: no domain 1 socket on an external xenstored"),
            };
        }
        let dir = tempfile::tempdir().unwrap();
        let xsd = Xenstored::start(dir.path(), Quotas::default()).unwrap();
        xsd.introduce_domain(0);
        xsd.introduce_domain(1);
        let dom0 = xsd.socket_path(0).unwrap();
        let dom1 = xsd.socket_path(1).unwrap();
        Fixture {
            dom0,
            _dir: Some(dir),
            _xsd: Some(xsd),
            dom1,
        }
    })
}

async fn client() -> XsClient {
    XsClient::connect(&fixture().dom0).await.unwrap()
}

#[tokio::test]
async fn read_write_directory_rm_with_typed_errors() {
    let c = client().await;
    c.write("/test/rw/a", "1").await.unwrap();
    c.write("/test/rw/b", "two").await.unwrap();
    assert_eq!(c.read("/test/rw/b").await.unwrap(), "two");
    let mut kids = c.directory("/test/rw").await.unwrap();
    kids.sort();
    assert_eq!(kids, ["a", "b"]);
    c.rm("/test/rw").await.unwrap();
    assert_eq!(c.read_opt("/test/rw/a").await.unwrap(), None);
    let e = c.read("/test/rw/a").await.unwrap_err();
    assert!(e.is_not_found());
    assert_eq!(e.to_string(), "xenstore read /test/rw/a: ENOENT");
}

#[tokio::test]
async fn oversized_and_malformed_requests_are_refused_before_sending() {
    let c = client().await;
    let big = "x".repeat(4096);
    let e = c.write("/test/big", &big).await.unwrap_err();
    assert!(matches!(e, XsError::Invalid { .. }), "{e}");
    assert!(e.to_string().contains("4096-byte limit"), "{e}");
    let e = c.read("/test/bad path").await.unwrap_err();
    assert!(e.to_string().contains("not allowed"), "{e}");
    // The connection is not hung: the next call works at once.
    let ok = tokio::time::timeout(Duration::from_secs(2), c.write("/test/big", "small")).await;
    ok.expect("no hang").unwrap();
    // Just under the limit goes through.
    let fits = "y".repeat(4096 - "/test/fits".len() - 1);
    c.write("/test/fits", &fits).await.unwrap();
    assert_eq!(c.read("/test/fits").await.unwrap().len(), fits.len());
}

#[tokio::test]
async fn mkdir_perms_and_domain_path_through_the_own_codec() {
    let c = client().await;
    c.mkdir("/test/perm/dir").await.unwrap();
    assert_eq!(c.read("/test/perm/dir").await.unwrap(), "");
    let perms = vec![
        Perm::new(0, PermAccess::None),
        Perm::new(1, PermAccess::Read),
    ];
    c.set_perms("/test/perm/dir", &perms).await.unwrap();
    assert_eq!(c.get_perms("/test/perm/dir").await.unwrap(), perms);
    assert_eq!(c.get_domain_path(1).await.unwrap(), "/local/domain/1");
    let e = c.set_perms("/test/perm/missing", &perms).await.unwrap_err();
    assert!(e.is_not_found(), "{e}");
    let e = c.set_perms("/test/perm/dir", &[]).await.unwrap_err();
    assert!(matches!(e, XsError::Invalid { .. }));
}

#[tokio::test]
async fn a_transaction_conflict_answers_eagain_and_the_helper_retries() {
    let c = client().await;
    c.write("/test/tx/n", "0").await.unwrap();
    let t1 = c.begin().await.unwrap();
    let t2 = c.begin().await.unwrap();
    assert_eq!(t1.read("/test/tx/n").await.unwrap(), "0");
    assert_eq!(t2.read("/test/tx/n").await.unwrap(), "0");
    t1.write("/test/tx/n", "1").await.unwrap();
    t2.write("/test/tx/n", "2").await.unwrap();
    // Isolation: outside, nothing yet.
    assert_eq!(c.read("/test/tx/n").await.unwrap(), "0");
    t1.commit().await.unwrap();
    let e = t2.commit().await.unwrap_err();
    assert_eq!(
        e.errno(),
        Some(xenring::abi::xs_wire::XsErrno::Eagain),
        "{e}"
    );
    assert_eq!(c.read("/test/tx/n").await.unwrap(), "1");

    // Eight tasks each add one ten times through `transaction`: no lost update.
    c.write("/test/tx/count", "0").await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                c.transaction(async |tx| {
                    let n: u32 = tx.read("/test/tx/count").await?.parse().unwrap();
                    tx.write("/test/tx/count", &(n + 1).to_string()).await
                })
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(c.read("/test/tx/count").await.unwrap(), "80");
}

#[tokio::test]
async fn watches_fire_on_set_and_below_and_an_undrained_one_stalls_nothing() {
    let c = client().await;
    let mut w = c.watch("/test/w").await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first, "/test/w", "fires once when set");
    c.write("/test/w/x/y", "1").await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .unwrap()
        .unwrap();
    assert!(ev.starts_with("/test/w"), "{ev}");

    // A watch nobody reads, with far more events than its queue holds.
    let opts = ClientOptions {
        watch_queue: 4,
        ..ClientOptions::default()
    };
    let lazy = XsClient::connect_with(&fixture().dom0, opts).await.unwrap();
    let mut undrained = lazy.watch("/test/flood").await.unwrap();
    for i in 0..300 {
        lazy.write(&format!("/test/flood/{}", i % 7), &i.to_string())
            .await
            .unwrap();
    }
    // Calls on the same connection still answer promptly.
    let r = tokio::time::timeout(Duration::from_secs(2), lazy.read("/test/flood/3")).await;
    assert!(r.expect("not stalled").is_ok());
    // The queue kept some events; once drained, the coalesced event for the
    // watched path arrives, so no wakeup was lost.
    let mut seen = Vec::new();
    while let Ok(Some(ev)) =
        tokio::time::timeout(Duration::from_millis(300), undrained.next()).await
    {
        seen.push(ev);
    }
    assert!(seen.len() <= 6, "queue bound respected: {seen:?}");
    assert_eq!(
        seen.last().map(String::as_str),
        Some("/test/flood"),
        "{seen:?}"
    );
}

#[tokio::test]
async fn wait_for_returns_when_the_value_arrives() {
    let c = client().await;
    let c2 = c.clone();
    let waiter =
        tokio::spawn(async move { c2.wait_for("/test/wait/state", |v| v == Some("4")).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.write("/test/wait/state", "2").await.unwrap();
    c.write("/test/wait/state", "4").await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got.as_deref(), Some("4"));
}

#[tokio::test]
async fn a_domu_socket_gets_eacces_naming_the_path() {
    let f = fixture();
    let c = client().await;
    c.write("/test/private", "secret").await.unwrap();
    // A raw connection on domain 1's socket: what dom0 did not give, it
    // may not read.
    let conn = xenring::xenstore::conn::XsConn::connect(&f.dom1, None)
        .await
        .unwrap();
    let m = xenring::xenstore::XsMsg::with_strings(
        xenring::abi::xs_wire::XsType::Read,
        0,
        0,
        &[b"/test/private"],
        true,
    )
    .unwrap();
    let reply = conn.request(m).await.unwrap();
    assert_eq!(
        reply.error_name(),
        Some(xenring::abi::xs_wire::XsErrno::Eacces)
    );
}
