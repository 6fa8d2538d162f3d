//! The server's rule for a guest that never reads the events another
//! guest's writes cause (with the stall limit shortened to 1 s).

use tokio::net::UnixStream;

use super::*;
use crate::xenstore::codec::{read_msg, write_msg};

async fn call(s: &mut UnixStream, ty: XsType, parts: &[&[u8]]) -> XsMsg {
    let m = XsMsg::with_strings(ty, 1, 0, parts, ty != XsType::Write).unwrap();
    write_msg(s, &m).await.unwrap();
    loop {
        let r = read_msg(s).await.unwrap().expect("connection open");
        if r.ty != XsType::WatchEvent.raw() {
            assert_eq!(r.error_name(), None, "{ty:?} {parts:?}");
            return r;
        }
    }
}

/// Guest 1 may read guest 2's `data` and watches it, but never reads its
/// socket: guest 2's writes wait for it while it makes no progress, then
/// it alone is dropped and guest 2 goes on.
#[tokio::test]
async fn a_guest_that_never_reads_holds_another_guest_up_only_for_the_stall_limit() {
    let dir = tempfile::tempdir().unwrap();
    let quotas = Quotas {
        nodes: 0,
        ..Quotas::default()
    };
    let xs = Xenstored::start(dir.path(), quotas).unwrap();
    xs.introduce_domain(1);
    xs.introduce_domain(2);
    let mut dom0 = UnixStream::connect(xs.socket_path(0).unwrap())
        .await
        .unwrap();
    call(
        &mut dom0,
        XsType::SetPerms,
        &[b"/local/domain/2/data", b"n2", b"r1"],
    )
    .await;
    let mut dom1 = UnixStream::connect(xs.socket_path(1).unwrap())
        .await
        .unwrap();
    call(
        &mut dom1,
        XsType::Watch,
        &[b"/local/domain/2/data", b"peer"],
    )
    .await;
    let mut dom2 = UnixStream::connect(xs.socket_path(2).unwrap())
        .await
        .unwrap();
    for i in 0..10_000 {
        let path = format!("data/g{}/n{}", i / 100, i % 100);
        call(&mut dom2, XsType::Write, &[path.as_bytes(), b"v"]).await;
    }
    let stats = xs.stats();
    assert!(stats.throttled > 0, "{stats:?}");
    assert_eq!(stats.dropped, 1, "{stats:?}");
    // Guest 1 finds its connection closed after what was queued.
    let mut events = 0;
    while let Ok(Some(m)) = read_msg(&mut dom1).await {
        assert_eq!(m.ty, XsType::WatchEvent.raw());
        events += 1;
    }
    assert!(events > 1);
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

/// A guest pipelines reads of a big node on every connection it may open,
/// reads no reply and shuts down its write half: each reader ends with
/// the writer stuck on a full socket. Those connections still count (one
/// more is refused), and once the writers make no headway for the stall
/// limit they are closed.
#[tokio::test]
async fn a_connection_whose_reader_ended_counts_until_its_writer_gives_up() {
    use tokio::io::AsyncWriteExt as _;
    let dir = tempfile::tempdir().unwrap();
    let quotas = Quotas {
        outstanding: 0,
        ..Quotas::default()
    };
    let xs = Xenstored::start(dir.path(), quotas).unwrap();
    xs.introduce_domain(1);
    let p1 = xs.socket_path(1).unwrap();
    {
        let mut c = UnixStream::connect(&p1).await.unwrap();
        let big = "b".repeat(2000);
        call(&mut c, XsType::Write, &[b"data/big", big.as_bytes()]).await;
    }
    until("the first connection closed", || {
        xs.stats().connections == 0
    })
    .await;
    const N: u32 = 300;
    let before = xs.stats().requests;
    let mut readers = Vec::new();
    for _ in 0..MAX_CONNECTIONS_PER_DOMAIN {
        let (rd, mut wr) = UnixStream::connect(&p1).await.unwrap().into_split();
        for i in 0..N {
            let m = XsMsg::with_strings(XsType::Read, i, 0, &[b"data/big"], true).unwrap();
            write_msg(&mut wr, &m).await.unwrap();
        }
        wr.shutdown().await.unwrap();
        readers.push(rd);
    }
    let all = (MAX_CONNECTIONS_PER_DOMAIN as u64) * u64::from(N);
    until("every request read", || xs.stats().requests - before == all).await;
    // Every reader has read its EOF by now (it only had that left).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = UnixStream::connect(&p1).await.unwrap();
    let m = XsMsg::with_strings(XsType::Read, 7, 0, &[b"domid"], true).unwrap();
    let _ = write_msg(&mut extra, &m).await;
    let m = read_msg(&mut extra).await.unwrap().expect("an answer");
    assert_eq!((m.req_id, m.error_name()), (0, Some(XsErrno::Enospc)));
    // Nobody reads: the writers give up and the connections close.
    until("the stuck connections closed", || {
        xs.stats().connections == 0
    })
    .await;
    let mut rd = readers.pop().unwrap();
    let mut replies = 0;
    while let Ok(Some(_)) = read_msg(&mut rd).await {
        replies += 1;
    }
    assert!(replies < N, "{replies} replies: the writer never gave up");
}

/// A request of a connection closed meanwhile (its domain released on
/// another thread while the reader waited for the store lock) is not
/// handled: a released domain cannot write.
#[tokio::test]
async fn a_request_of_a_closed_connection_is_not_handled() {
    let dir = tempfile::tempdir().unwrap();
    let xs = Xenstored::start(dir.path(), Quotas::default()).unwrap();
    xs.introduce_domain(1);
    // A connection id the server has closed (or never had).
    let gone = ConnId(u64::MAX);
    let m = XsMsg::with_strings(XsType::Write, 1, 0, &[b"data/x", b"v"], false).unwrap();
    assert!(xs.inner.request(gone, 1, &m).is_empty());
    let mut dom0 = UnixStream::connect(xs.socket_path(0).unwrap())
        .await
        .unwrap();
    let m = XsMsg::with_strings(XsType::Read, 1, 0, &[b"/local/domain/1/data/x"], true).unwrap();
    write_msg(&mut dom0, &m).await.unwrap();
    let r = read_msg(&mut dom0).await.unwrap().unwrap();
    assert_eq!(r.error_name(), Some(XsErrno::Enoent));
}

/// Big events fill a queue by bytes long before its message count: guest
/// 2 writes 400 nodes with long names under what guest 1 watches and
/// never reads (about 800 KB of events, 400 messages), and is throttled
/// until guest 1 is dropped for stalling.
#[tokio::test]
async fn big_events_fill_a_queue_by_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let quotas = Quotas {
        nodes: 0,
        ..Quotas::default()
    };
    let xs = Xenstored::start(dir.path(), quotas).unwrap();
    xs.introduce_domain(1);
    xs.introduce_domain(2);
    let mut dom0 = UnixStream::connect(xs.socket_path(0).unwrap())
        .await
        .unwrap();
    call(
        &mut dom0,
        XsType::SetPerms,
        &[b"/local/domain/2/data", b"n2", b"r1"],
    )
    .await;
    let mut dom1 = UnixStream::connect(xs.socket_path(1).unwrap())
        .await
        .unwrap();
    call(
        &mut dom1,
        XsType::Watch,
        &[b"/local/domain/2/data", b"peer"],
    )
    .await;
    let mut dom2 = UnixStream::connect(xs.socket_path(2).unwrap())
        .await
        .unwrap();
    let long = "x".repeat(1900);
    for i in 0..400 {
        let path = format!("data/{long}/n{i}");
        call(&mut dom2, XsType::Write, &[path.as_bytes(), b"v"]).await;
    }
    let stats = xs.stats();
    assert!(stats.throttled > 0, "{stats:?}");
    assert_eq!(stats.dropped, 1, "{stats:?}");
}

/// An INTRODUCE whose socket is opened after a release on another thread
/// (the domain is no longer introduced) opens nothing.
#[tokio::test]
async fn no_socket_is_opened_for_a_domain_released_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let xs = Xenstored::start(dir.path(), Quotas::default()).unwrap();
    xs.introduce_domain(5);
    xs.release_domain(5);
    // What INTRODUCE does after dropping the store lock.
    xs.inner.listen(5).unwrap();
    assert!(!dir.path().join("5.sock").exists());
    assert!(UnixStream::connect(dir.path().join("5.sock"))
        .await
        .is_err());
}

/// `SET_QUOTA <domid> outstanding` binds that domain's new connections.
#[tokio::test]
async fn a_domains_own_outstanding_quota_applies() {
    let dir = tempfile::tempdir().unwrap();
    let xs = Xenstored::start(dir.path(), Quotas::default()).unwrap();
    xs.introduce_domain(1);
    xs.introduce_domain(2);
    let mut dom0 = UnixStream::connect(xs.socket_path(0).unwrap())
        .await
        .unwrap();
    call(&mut dom0, XsType::SetQuota, &[b"1", b"outstanding", b"3"]).await;
    assert_eq!(xs.inner.outstanding_limit(1), 3);
    assert_eq!(
        xs.inner.outstanding_limit(2),
        Quotas::default().outstanding as usize
    );
}
