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
