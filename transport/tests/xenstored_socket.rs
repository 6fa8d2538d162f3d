//! The embedded xenstored over its Unix sockets, with a raw xs_wire client
//! (the project's codec): replies and events, per-domain sockets, bad
//! clients closed without hurting others, clients that do not read.

use std::path::Path;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::time::timeout;
use xenring::abi::xs_wire::{XsErrno, XsType};
use xenring::xenstore::codec::{read_msg, write_msg};
use xenring::xenstore::{Quotas, Xenstored, XsMsg};

const PATIENCE: Duration = Duration::from_secs(20);

struct Client {
    s: UnixStream,
    req: u32,
    /// Events read while waiting for replies.
    events: Vec<(String, String)>,
}

fn z(parts: &[&str]) -> Vec<u8> {
    let mut v = Vec::new();
    for p in parts {
        v.extend_from_slice(p.as_bytes());
        v.push(0);
    }
    v
}

fn event(m: &XsMsg) -> (String, String) {
    assert_eq!(m.ty, XsType::WatchEvent.raw(), "{m:?}");
    assert_eq!((m.req_id, m.tx_id), (0, 0));
    let p = m.parts();
    (
        String::from_utf8(p[0].to_vec()).unwrap(),
        String::from_utf8(p[1].to_vec()).unwrap(),
    )
}

impl Client {
    async fn connect(path: &Path) -> Client {
        Client {
            s: UnixStream::connect(path).await.expect("connect"),
            req: 0,
            events: Vec::new(),
        }
    }

    async fn send(&mut self, ty: XsType, tx: u32, payload: &[u8]) -> u32 {
        self.req += 1;
        let m = XsMsg {
            ty: ty.raw(),
            req_id: self.req,
            tx_id: tx,
            payload: payload.to_vec(),
        };
        write_msg(&mut self.s, &m).await.expect("send");
        self.req
    }

    async fn recv(&mut self) -> Option<XsMsg> {
        timeout(PATIENCE, read_msg(&mut self.s))
            .await
            .expect("no message in time")
            .ok()
            .flatten()
    }

    /// Sends a request and waits for its reply, keeping events aside.
    async fn call(&mut self, ty: XsType, payload: &[u8]) -> XsMsg {
        let id = self.send(ty, 0, payload).await;
        loop {
            let m = self.recv().await.expect("connection closed");
            if m.ty == XsType::WatchEvent.raw() {
                self.events.push(event(&m));
                continue;
            }
            assert_eq!(m.req_id, id);
            return m;
        }
    }

    async fn write(&mut self, path: &str, value: &str) -> Result<(), XsErrno> {
        let mut p = z(&[path]);
        p.extend_from_slice(value.as_bytes());
        let r = self.call(XsType::Write, &p).await;
        match r.error_name() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn read(&mut self, path: &str) -> Result<String, XsErrno> {
        let r = self.call(XsType::Read, &z(&[path])).await;
        match r.error_name() {
            Some(e) => Err(e),
            None => Ok(String::from_utf8(r.payload).unwrap()),
        }
    }

    async fn next_event(&mut self) -> (String, String) {
        if !self.events.is_empty() {
            return self.events.remove(0);
        }
        event(&self.recv().await.expect("connection closed"))
    }
}

fn start() -> (tempfile::TempDir, Xenstored) {
    let dir = tempfile::tempdir().unwrap();
    let xs = Xenstored::start(dir.path().join("xs"), Quotas::default()).unwrap();
    (dir, xs)
}

#[tokio::test]
async fn requests_replies_and_per_domain_sockets() {
    let (_d, xs) = start();
    xs.introduce_domain(1);
    let p0 = xs.socket_path(0).unwrap();
    assert_eq!(p0, xs.dir().join("0.sock"));
    assert_eq!(xs.socket_path(0).unwrap(), p0, "same socket");
    let mut dom0 = Client::connect(&p0).await;
    let mut dom1 = Client::connect(&xs.socket_path(1).unwrap()).await;
    dom0.write("/a/b", "v").await.unwrap();
    assert_eq!(dom0.read("/a/b").await.unwrap(), "v");
    assert_eq!(dom1.read("/a/b").await, Err(XsErrno::Eacces));
    assert_eq!(dom1.read("domid").await.unwrap(), "1");
    dom1.write("data/x", "from 1").await.unwrap();
    assert_eq!(dom0.read("/local/domain/1/data/x").await.unwrap(), "from 1");
    let r = dom1.call(XsType::IsDomainIntroduced, &z(&["1"])).await;
    assert_eq!(r.error_name(), Some(XsErrno::Eacces));
    let r = dom0.call(XsType::IsDomainIntroduced, &z(&["1"])).await;
    assert_eq!(r.payload, b"T\0");
    assert!(xs.stats().requests >= 8);
}

#[tokio::test]
async fn watch_ack_comes_before_its_first_event() {
    let (_d, xs) = start();
    let p0 = xs.socket_path(0).unwrap();
    let mut w = Client::connect(&p0).await;
    let mut other = Client::connect(&p0).await;
    let id = w.send(XsType::Watch, 0, &z(&["/watched", "tok"])).await;
    let ack = w.recv().await.unwrap();
    assert_eq!((ack.ty, ack.req_id), (XsType::Watch.raw(), id));
    assert_eq!(ack.payload, b"OK\0");
    assert_eq!(w.next_event().await, ("/watched".into(), "tok".into()));
    other.write("/watched/child", "1").await.unwrap();
    assert_eq!(
        w.next_event().await,
        ("/watched/child".into(), "tok".into())
    );
}

#[tokio::test]
async fn a_bad_client_is_answered_or_closed_and_the_other_keeps_working() {
    let (_d, xs) = start();
    let p0 = xs.socket_path(0).unwrap();
    let mut good = Client::connect(&p0).await;
    let mut bad = Client::connect(&p0).await;
    good.write("/good", "1").await.unwrap();

    // Unknown type: an error reply echoing the request id.
    let mut garbage = [0u8; 16];
    garbage[0..4].copy_from_slice(&999u32.to_le_bytes());
    garbage[4..8].copy_from_slice(&77u32.to_le_bytes());
    garbage[12..16].copy_from_slice(&3u32.to_le_bytes());
    bad.s.write_all(&garbage).await.unwrap();
    bad.s.write_all(b"xyz").await.unwrap();
    let r = bad.recv().await.unwrap();
    assert_eq!((r.req_id, r.error_name()), (77, Some(XsErrno::Enosys)));
    // Missing NUL, bad characters: error replies, the connection stays.
    let r = bad.call(XsType::Read, b"/no-nul").await;
    assert_eq!(r.error_name(), Some(XsErrno::Einval));
    let r = bad.call(XsType::Write, b"/bad path\0v").await;
    assert_eq!(r.error_name(), Some(XsErrno::Einval));
    assert_eq!(good.read("/good").await.unwrap(), "1");

    // An oversized header closes the connection.
    let mut huge = [0u8; 16];
    huge[0..4].copy_from_slice(&XsType::Write.raw().to_le_bytes());
    huge[12..16].copy_from_slice(&5000u32.to_le_bytes());
    bad.s.write_all(&huge).await.unwrap();
    assert!(bad.recv().await.is_none(), "closed");
    good.write("/good", "2").await.unwrap();
    assert_eq!(good.read("/good").await.unwrap(), "2");
}

#[tokio::test]
async fn an_undrained_watch_coalesces_and_stalls_nobody() {
    let (_d, xs) = start();
    let p0 = xs.socket_path(0).unwrap();
    let mut sleeper = Client::connect(&p0).await;
    let mut writer = Client::connect(&p0).await;
    let mut reader = Client::connect(&p0).await;
    let r = sleeper.call(XsType::Watch, &z(&["/flood", "s"])).await;
    assert_eq!(r.payload, b"OK\0");
    assert_eq!(sleeper.next_event().await, ("/flood".into(), "s".into()));
    let r = reader.call(XsType::Watch, &z(&["/flood/last", "r"])).await;
    assert_eq!(r.payload, b"OK\0");
    // The sleeper does not read for 20,000 writes to 50 nodes: far more
    // than the kernel buffer and its queue hold, but the same 50 events
    // again and again, which coalesce: nobody waits, nobody is dropped.
    let value = "x".repeat(200);
    for i in 0..20_000 {
        writer
            .write(&format!("/flood/n{}", i % 50), &value)
            .await
            .unwrap();
    }
    writer.write("/flood/last", "done").await.unwrap();
    assert_eq!(
        reader.next_event().await,
        ("/flood/last".into(), "r".into())
    );
    assert_eq!(
        reader.next_event().await,
        ("/flood/last".into(), "r".into())
    );
    // The sleeper wakes up: its connection works, and it hears of every
    // node that changed.
    assert_eq!(sleeper.read("/flood/last").await.unwrap(), "done");
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 51 {
        let (path, token) = sleeper.next_event().await;
        assert_eq!(token, "s");
        seen.insert(path);
    }
    let stats = xs.stats();
    assert_eq!((stats.dropped, stats.throttled), (0, 0));
    assert!(stats.coalesced > 10_000, "{stats:?}");
}

/// The issue's case: a domU writes fast under a node the dom0 backend
/// watches while the backend does not read. Dom0 is never dropped and
/// hears of every write (all distinct, so nothing coalesces); the domU
/// waits instead.
#[tokio::test]
async fn a_domu_flooding_a_watched_node_waits_for_a_paused_dom0() {
    let dir = tempfile::tempdir().unwrap();
    let quotas = Quotas {
        nodes: 0,
        ..Quotas::default()
    };
    let xs = Xenstored::start(dir.path(), quotas).unwrap();
    xs.introduce_domain(1);
    let mut dom0 = Client::connect(&xs.socket_path(0).unwrap()).await;
    let r = dom0
        .call(XsType::Watch, &z(&["/local/domain/1/data", "be"]))
        .await;
    assert_eq!(r.payload, b"OK\0");
    assert_eq!(dom0.next_event().await.0, "/local/domain/1/data");
    const N: usize = 20_000;
    let mut dom1 = Client::connect(&xs.socket_path(1).unwrap()).await;
    let guest = tokio::spawn(async move {
        for i in 0..N {
            dom1.write(&format!("data/g{}/n{}", i / 100, i % 100), "1")
                .await
                .unwrap();
        }
        dom1
    });
    // Dom0 is busy until the guest is held up (or done).
    let mut last = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = xs.stats().requests;
        if now == last || guest.is_finished() {
            break;
        }
        last = now;
    }
    for i in 0..N {
        let (path, token) = dom0.next_event().await;
        assert_eq!(
            (path.as_str(), token.as_str()),
            (
                format!("/local/domain/1/data/g{}/n{}", i / 100, i % 100).as_str(),
                "be"
            )
        );
    }
    let mut dom1 = guest.await.unwrap();
    assert!(xs.stats().throttled > 0, "the guest never waited");
    assert_eq!(dom1.read("data/g0/n0").await.unwrap(), "1");
    assert_eq!(dom0.read("/local/domain/1/data/g9/n9").await.unwrap(), "1");
    assert_eq!(xs.stats().dropped, 0);
}

/// A guest that never reads its watch events cannot hold dom0 up: dom0's
/// writes go on, and the guest alone loses its connection.
#[tokio::test]
async fn a_guest_that_never_reads_cannot_hold_dom0_up() {
    let (_d, xs) = start();
    xs.introduce_domain(1);
    let mut dom1 = Client::connect(&xs.socket_path(1).unwrap()).await;
    let r = dom1.call(XsType::Watch, &z(&["data", "fe"])).await;
    assert_eq!(r.payload, b"OK\0");
    let mut dom0 = Client::connect(&xs.socket_path(0).unwrap()).await;
    for i in 0..10_000 {
        dom0.write(
            &format!("/local/domain/1/data/g{}/n{}", i / 100, i % 100),
            "v",
        )
        .await
        .unwrap();
    }
    assert_eq!(xs.stats().dropped, 1);
    let mut n = 0;
    while dom1.recv().await.is_some() {
        n += 1;
    }
    assert!(n > 1);
}

/// A domain may open 64 connections; the next is refused, dom0 is not
/// limited, and a closed connection makes room again.
#[tokio::test]
async fn connections_per_domain_are_limited() {
    const LIMIT: usize = 64;
    let (_d, xs) = start();
    xs.introduce_domain(1);
    let p1 = xs.socket_path(1).unwrap();
    let mut open = Vec::new();
    for _ in 0..LIMIT {
        let mut c = Client::connect(&p1).await;
        assert_eq!(c.read("domid").await.unwrap(), "1");
        open.push(c);
    }
    // One more: refused (ENOSPC, then closed), or at least not served.
    let mut extra = Client::connect(&p1).await;
    let m = XsMsg::with_strings(XsType::Read, 1, 0, &[b"domid"], true).unwrap();
    // The server may have closed it already.
    let _ = extra.s.write_all(&m.to_bytes()).await;
    match extra.recv().await {
        None => {}
        Some(m) => {
            assert_eq!((m.req_id, m.error_name()), (0, Some(XsErrno::Enospc)));
            assert!(extra.recv().await.is_none(), "closed after refusing");
        }
    }
    assert_eq!(xs.stats().refused, 1);
    // Dom0 is not limited.
    let p0 = xs.socket_path(0).unwrap();
    let mut dom0s = Vec::new();
    for _ in 0..LIMIT + 10 {
        let mut c = Client::connect(&p0).await;
        assert_eq!(c.read("/local/domain/0/name").await.unwrap(), "Domain-0");
        dom0s.push(c);
    }
    // Room again once one is closed.
    drop(open.pop());
    let mut tries = 0;
    let mut again = loop {
        let mut c = Client::connect(&p1).await;
        let _ = c.s.write_all(&m.to_bytes()).await;
        match c.recv().await {
            Some(m) if m.error_name().is_none() => {
                assert_eq!(m.payload, b"1");
                break c;
            }
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
        tries += 1;
        assert!(tries < 2000, "no room after a connection closed");
    };
    assert_eq!(again.read("name").await.unwrap(), "domain-1");
}

#[tokio::test]
async fn a_domu_that_does_not_read_its_replies_is_not_read_either() {
    let dir = tempfile::tempdir().unwrap();
    let xs = Xenstored::start(dir.path(), Quotas::default()).unwrap();
    xs.introduce_domain(1);
    let mut dom1 = Client::connect(&xs.socket_path(1).unwrap()).await;
    dom1.write("data/big", &"b".repeat(2000)).await.unwrap();
    let before = xs.stats().requests;
    // Pipeline many reads of a 2000-byte value and read nothing back.
    const N: u32 = 5000;
    let (mut rd, mut wr) = dom1.s.into_split();
    let sender = tokio::spawn(async move {
        for i in 0..N {
            let m = XsMsg::with_strings(XsType::Read, i, 0, &[b"data/big"], true).unwrap();
            write_msg(&mut wr, &m).await.unwrap();
        }
        wr
    });
    // Wait until the server stops taking requests.
    let mut last = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = xs.stats().requests - before;
        if now == last {
            break;
        }
        last = now;
    }
    assert!(
        last < u64::from(N),
        "the server kept reading ({last} requests)"
    );
    for i in 0..N {
        let m = timeout(PATIENCE, read_msg(&mut rd))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!((m.req_id, m.payload.len()), (i, 2000));
    }
    let _wr = sender.await.unwrap();
    assert_eq!(xs.stats().requests - before, u64::from(N));
    assert_eq!(xs.stats().dropped, 0);
}

#[tokio::test]
async fn release_ends_the_domain_watches_and_fires_release_domain() {
    let (_d, xs) = start();
    xs.introduce_domain(3);
    let mut dom0 = Client::connect(&xs.socket_path(0).unwrap()).await;
    let mut dom3 = Client::connect(&xs.socket_path(3).unwrap()).await;
    dom0.call(XsType::Watch, &z(&["@releaseDomain", "rel"]))
        .await;
    dom0.call(XsType::Watch, &z(&["@introduceDomain", "intro"]))
        .await;
    assert_eq!(dom0.next_event().await.0, "@releaseDomain");
    assert_eq!(dom0.next_event().await.0, "@introduceDomain");
    dom3.call(XsType::Watch, &z(&["data", "mine"])).await;
    assert_eq!(dom3.next_event().await, ("data".into(), "mine".into()));
    xs.introduce_domain(4);
    assert_eq!(
        dom0.next_event().await,
        ("@introduceDomain".into(), "intro".into())
    );
    xs.release_domain(3);
    assert_eq!(
        dom0.next_event().await,
        ("@releaseDomain".into(), "rel".into())
    );
    assert!(!xs.is_introduced(3));
    // A released domain cannot speak: its connection is closed (after
    // nothing more than what was queued) and its socket is gone.
    while let Some(m) = dom3.recv().await {
        assert_eq!(m.ty, XsType::WatchEvent.raw(), "{m:?}");
    }
    let p3 = xs.socket_path(3).unwrap();
    assert!(!p3.exists());
    assert!(UnixStream::connect(&p3).await.is_err());
    // Its nodes went with it; dom0 still works.
    assert_eq!(
        dom0.read("/local/domain/3/data").await,
        Err(XsErrno::Enoent)
    );
    dom0.write("/still", "ok").await.unwrap();
}

/// INTRODUCE and RELEASE over the wire open and close a domain's socket
/// as the host's calls do.
#[tokio::test]
async fn introduce_and_release_requests_open_and_close_the_socket() {
    let (_d, xs) = start();
    let mut dom0 = Client::connect(&xs.socket_path(0).unwrap()).await;
    let p2 = xs.socket_path(2).unwrap();
    assert!(UnixStream::connect(&p2).await.is_err());
    let r = dom0.call(XsType::Introduce, &z(&["2", "0", "1"])).await;
    assert_eq!(r.error_name(), None);
    let mut dom2 = Client::connect(&p2).await;
    assert_eq!(dom2.read("domid").await.unwrap(), "2");
    let r = dom0.call(XsType::Release, &z(&["2"])).await;
    assert_eq!(r.error_name(), None);
    while let Some(m) = dom2.recv().await {
        assert_eq!(m.ty, XsType::WatchEvent.raw(), "{m:?}");
    }
    assert!(UnixStream::connect(&p2).await.is_err());
}

#[tokio::test]
async fn a_domain_never_introduced_has_no_socket() {
    let (_d, xs) = start();
    let p7 = xs.socket_path(7).unwrap();
    assert!(!p7.exists());
    assert!(UnixStream::connect(&p7).await.is_err());
    xs.introduce_domain(7);
    let mut dom7 = Client::connect(&p7).await;
    assert_eq!(dom7.read("domid").await.unwrap(), "7");
}

#[tokio::test]
async fn shutdown_closes_connections_and_removes_sockets() {
    let (_d, xs) = start();
    let p0 = xs.socket_path(0).unwrap();
    let p5 = xs.socket_path(5).unwrap();
    let mut c = Client::connect(&p0).await;
    c.write("/x", "1").await.unwrap();
    assert_eq!(xs.stats().connections, 1);
    xs.shutdown();
    assert!(c.recv().await.is_none());
    assert!(!p0.exists() && !p5.exists());
    assert!(UnixStream::connect(&p0).await.is_err());
}

#[test]
fn drop_stops_and_removes_the_sockets_and_a_restart_reuses_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = {
        let xs = Xenstored::start(dir.path(), Quotas::default()).unwrap();
        xs.socket_path(0).unwrap()
    };
    assert!(!path.exists());
    // A stale socket file is replaced.
    std::fs::write(dir.path().join("0.sock"), b"stale").unwrap();
    let xs = Xenstored::start(dir.path(), Quotas::default()).unwrap();
    let p = xs.socket_path(0).unwrap();
    let mut s = std::os::unix::net::UnixStream::connect(&p).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let m = XsMsg::with_strings(XsType::Read, 1, 0, &[b"/local/domain/0/name"], true).unwrap();
    std::io::Write::write_all(&mut s, &m.to_bytes()).unwrap();
    let mut buf = [0u8; 16 + 8];
    std::io::Read::read_exact(&mut s, &mut buf).unwrap();
    assert_eq!(&buf[16..], b"Domain-0");
}

/// Waits (at most 20 s) until `f` holds.
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..2000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not within 20 s: {what}");
}

/// A guest held up by a paused dom0 watcher hangs up (as a client does
/// after its timeout): its connection ends at once instead of waiting
/// for dom0, so reconnecting clients cannot pile up stuck connections.
#[tokio::test]
async fn a_throttled_client_that_hangs_up_is_closed_while_it_waits() {
    let dir = tempfile::tempdir().unwrap();
    let quotas = Quotas {
        nodes: 0,
        ..Quotas::default()
    };
    let xs = Xenstored::start(dir.path(), quotas).unwrap();
    xs.introduce_domain(1);
    let mut dom0 = Client::connect(&xs.socket_path(0).unwrap()).await;
    let r = dom0
        .call(XsType::Watch, &z(&["/local/domain/1/data", "be"]))
        .await;
    assert_eq!(r.payload, b"OK\0");
    let p1 = xs.socket_path(1).unwrap();
    for round in 0..3 {
        let mut dom1 = Client::connect(&p1).await;
        let guest = tokio::spawn(async move {
            for i in 0..100_000 {
                let node = format!("data/r{round}/g{}/n{}", i / 100, i % 100);
                dom1.write(&node, "1").await.unwrap();
            }
        });
        let throttled = xs.stats().throttled;
        until("the guest is throttled", || {
            xs.stats().throttled > throttled
        })
        .await;
        assert!(!guest.is_finished());
        guest.abort();
        let _ = guest.await;
        until("the guest's connection is closed", || {
            xs.stats().connections == 1
        })
        .await;
    }
    assert_eq!(xs.stats().dropped, 0);
}
