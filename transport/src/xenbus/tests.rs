//! The XenBus helpers and the toolstack against an embedded xenstored.
//!
//! This module starts one xenstored for all its tests; clients speak as
//! dom0 on its dom0 socket, and a domU's view goes through a raw
//! [`XsConn`] on that domain's socket. Each test
//! uses its own device kind, so tests running side by side never see each
//! other's devices.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use futures::StreamExt;
use tokio::time::timeout;

use super::*;
use crate::abi::xenbus::XenbusState;
use crate::abi::xs_wire::{XsErrno, XsType};
use crate::xenstore::conn::XsConn;
use crate::xenstore::{Perm, PermAccess, Quotas, Xenstored, XsClient, XsMsg};

const LONG: Duration = Duration::from_secs(10);

struct Fixture {
    _dir: tempfile::TempDir,
    _xsd: Xenstored,
    dir: PathBuf,
    dom0: PathBuf,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let xsd = Xenstored::start(dir.path(), Quotas::default()).unwrap();
        xsd.introduce_domain(1);
        xsd.introduce_domain(2);
        let dom0 = xsd.socket_path(0).unwrap();
        for d in [1, 2] {
            xsd.socket_path(d).unwrap();
        }
        Fixture {
            dom0,
            dir: xsd.dir().to_path_buf(),
            _dir: dir,
            _xsd: xsd,
        }
    })
}

async fn client() -> XsClient {
    XsClient::connect(&fixture().dom0).await.unwrap()
}

/// A raw connection speaking for `domid`.
async fn domu(domid: u16) -> XsConn {
    let path = fixture().dir.join(format!("{domid}.sock"));
    XsConn::connect(&path, None).await.unwrap()
}

/// One request on a raw connection: the reply's text, or the error named.
async fn raw(conn: &XsConn, ty: XsType, parts: &[&str]) -> Result<String, XsErrno> {
    let parts: Vec<&[u8]> = parts.iter().map(|p| p.as_bytes()).collect();
    let m = XsMsg::with_strings(ty, 0, 0, &parts, ty != XsType::Write).unwrap();
    let r = conn.request(m).await.unwrap();
    match r.error_name() {
        Some(e) => Err(e),
        None => Ok(String::from_utf8_lossy(&r.payload)
            .trim_end_matches('\0')
            .to_string()),
    }
}

fn id(kind: &str, fe: u16, devid: u32) -> DeviceId {
    DeviceId::new(kind, fe, 0, devid).unwrap()
}

fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A device created by the toolstack, for the helpers' tests.
async fn made(xs: &XsClient, kind: &str, devid: u32) -> DeviceId {
    let d = id(kind, 1, devid);
    create_device(xs, &DeviceSpec::new(d.clone()))
        .await
        .unwrap();
    d
}

#[tokio::test]
async fn read_and_switch_state_never_resurrect_a_removed_device() {
    let xs = client().await;
    let dir = "/test/xenbus/switch/0";
    xs.mkdir(dir).await.unwrap();
    assert_eq!(read_state(&xs, dir).await.unwrap(), XenbusState::Unknown);

    let mut w = xs.watch(&format!("{dir}/state")).await.unwrap();
    timeout(LONG, w.next()).await.unwrap().unwrap(); // fires when set
    switch_state(&xs, dir, XenbusState::InitWait).await.unwrap();
    timeout(LONG, w.next()).await.unwrap().unwrap();
    assert_eq!(xs.read(&format!("{dir}/state")).await.unwrap(), "2");
    assert_eq!(read_state(&xs, dir).await.unwrap(), XenbusState::InitWait);
    // Already InitWait: nothing is written, so only the next switch fires.
    switch_state(&xs, dir, XenbusState::InitWait).await.unwrap();
    switch_state(&xs, dir, XenbusState::Connected)
        .await
        .unwrap();
    timeout(LONG, w.next()).await.unwrap().unwrap();
    assert_eq!(read_state(&xs, dir).await.unwrap(), XenbusState::Connected);
    assert!(
        timeout(Duration::from_millis(200), w.next()).await.is_err(),
        "the same-state switch wrote"
    );

    xs.write(&format!("{dir}/state"), "connected")
        .await
        .unwrap();
    let e = read_state(&xs, dir).await.unwrap_err();
    assert!(
        matches!(&e, XenbusError::BadState { path, value } if path == &format!("{dir}/state") && value == "connected"),
        "{e}"
    );
    // A switch overwrites garbage.
    switch_state(&xs, dir, XenbusState::Closing).await.unwrap();
    assert_eq!(read_state(&xs, dir).await.unwrap(), XenbusState::Closing);

    xs.rm(dir).await.unwrap();
    let e = switch_state(&xs, dir, XenbusState::Closed)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, XenbusError::Removed { dir: d } if d == dir),
        "{e}"
    );
    assert!(e.is_removed());
    assert_eq!(
        e.to_string(),
        "device directory /test/xenbus/switch/0 is gone (the device was removed)"
    );
    assert_eq!(xs.read_opt(dir).await.unwrap(), None, "not recreated");
    assert_eq!(read_state(&xs, dir).await.unwrap(), XenbusState::Unknown);
}

#[tokio::test]
async fn state_watch_yields_changes_once_and_unknown_on_removal() {
    let xs = client().await;
    let d = made(&xs, "t-watch", 0).await;
    let dir = d.backend_dir();
    let mut w = watch_state(&xs, &dir).await.unwrap();
    assert_eq!(w.current(), XenbusState::Unknown);
    assert_eq!(w.dir(), dir);
    let first = timeout(LONG, w.next()).await.unwrap().unwrap();
    assert_eq!(first, XenbusState::Initialising, "the current value first");
    // Rewriting the same value fires the watch but yields nothing.
    xs.write(&format!("{dir}/state"), "1").await.unwrap();
    xs.write(&format!("{dir}/state"), "1").await.unwrap();
    assert!(timeout(Duration::from_millis(200), w.next()).await.is_err());
    switch_state(&xs, &dir, XenbusState::InitWait)
        .await
        .unwrap();
    assert_eq!(
        timeout(LONG, w.next()).await.unwrap().unwrap(),
        XenbusState::InitWait
    );
    assert_eq!(w.current(), XenbusState::InitWait);
    // Garbage is reported once, then the next good value comes.
    xs.write(&format!("{dir}/state"), "x").await.unwrap();
    let e = timeout(LONG, w.next()).await.unwrap().unwrap_err();
    assert!(matches!(e, XenbusError::BadState { .. }), "{e}");
    xs.write(&format!("{dir}/state"), "4").await.unwrap();
    assert_eq!(
        timeout(LONG, w.next()).await.unwrap().unwrap(),
        XenbusState::Connected
    );
    remove_device(
        &xs,
        &d,
        RemoveOptions {
            force: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        timeout(LONG, w.next()).await.unwrap().unwrap(),
        XenbusState::Unknown
    );
}

#[tokio::test]
async fn a_cancelled_next_loses_no_change() {
    let xs = client().await;
    let d = made(&xs, "t-cancel", 0).await;
    let dir = d.frontend_dir();
    let mut w = watch_state(&xs, &dir).await.unwrap();
    assert_eq!(w.next().await.unwrap(), XenbusState::Initialising);
    // Dropped while waiting: nothing has changed, nothing is lost.
    assert!(timeout(Duration::from_millis(50), w.next()).await.is_err());
    switch_state(&xs, &dir, XenbusState::Initialised)
        .await
        .unwrap();
    assert_eq!(
        timeout(LONG, w.next()).await.unwrap().unwrap(),
        XenbusState::Initialised
    );
}

#[tokio::test]
async fn wait_for_state_returns_when_the_peer_gets_there() {
    let xs = client().await;
    let d = made(&xs, "t-wait", 0).await;
    let (xs2, dir) = (xs.clone(), d.backend_dir());
    let waiter =
        tokio::spawn(
            async move { wait_for_state(&xs2, &dir, |s| s == XenbusState::Connected).await },
        );
    for s in [XenbusState::InitWait, XenbusState::Connected] {
        tokio::time::sleep(Duration::from_millis(20)).await;
        switch_state(&xs, &d.backend_dir(), s).await.unwrap();
    }
    let got = timeout(LONG, waiter).await.unwrap().unwrap().unwrap();
    assert_eq!(got, XenbusState::Connected);
}

#[tokio::test]
async fn publish_writes_all_keys_at_once_and_refuses_a_removed_dir() {
    let xs = client().await;
    let dir = "/test/xenbus/publish";
    xs.mkdir(dir).await.unwrap();
    // A reader checking on every change: ring-ref and event-channel
    // always come as a pair.
    let (xs2, d2) = (xs.clone(), dir.to_string());
    let mut w = xs.watch(dir).await.unwrap();
    let reader = tokio::spawn(async move {
        let mut seen = 0;
        while let Some(_ev) = w.next().await {
            let m = read_keys(&xs2, &d2).await.unwrap();
            assert_eq!(m.get("ring-ref"), m.get("event-channel"), "{m:?}");
            if m.get("ring-ref").map(String::as_str) == Some("19") {
                return seen;
            }
            seen += 1;
        }
        panic!("watch ended");
    });
    for i in 0..20 {
        let v = i.to_string();
        publish(&xs, dir, &kv(&[("ring-ref", &v), ("event-channel", &v)]))
            .await
            .unwrap();
    }
    timeout(LONG, reader).await.unwrap().unwrap();
    // Keys with several components.
    publish(&xs, dir, &kv(&[("queue-0/ring-ref", "8")]))
        .await
        .unwrap();
    assert_eq!(
        xs.read(&format!("{dir}/queue-0/ring-ref")).await.unwrap(),
        "8"
    );

    xs.rm(dir).await.unwrap();
    let e = publish(&xs, dir, &kv(&[("ring-ref", "1")]))
        .await
        .unwrap_err();
    assert!(e.is_removed(), "{e}");
    assert_eq!(xs.read_opt(dir).await.unwrap(), None, "not recreated");
}

#[tokio::test]
async fn read_keys_reads_every_child_with_directories_as_empty() {
    let xs = client().await;
    let dir = "/test/xenbus/keys";
    publish(&xs, "/test", &kv(&[("xenbus/keys/state", "3")]))
        .await
        .unwrap();
    xs.write(&format!("{dir}/ring-ref"), "8").await.unwrap();
    xs.write(&format!("{dir}/queue-0/ring-ref"), "9")
        .await
        .unwrap();
    xs.mkdir(&format!("{dir}/empty")).await.unwrap();
    let m = read_keys(&xs, dir).await.unwrap();
    let want: BTreeMap<String, String> = kv(&[
        ("empty", ""),
        ("queue-0", ""),
        // One level below an empty child: multi-queue devices' keys.
        ("queue-0/ring-ref", "9"),
        ("ring-ref", "8"),
        ("state", "3"),
    ])
    .into_iter()
    .collect();
    assert_eq!(m, want);
    assert_eq!(parse_grant_ref_key(&m, dir, "ring-ref").unwrap(), 8);
    let e = parse_port_key(&m, dir, "event-channel").unwrap_err();
    assert_eq!(
        e.to_string(),
        "device key /test/xenbus/keys/event-channel is missing: the peer did not write it"
    );
    xs.rm(dir).await.unwrap();
    assert!(read_keys(&xs, dir).await.unwrap_err().is_removed());
}

#[tokio::test]
async fn error_nodes_go_where_linux_puts_them() {
    let xs = client().await;
    let d = made(&xs, "t-error", 3).await;
    write_error(
        &xs,
        &d,
        Side::Backend,
        "mapping ring-ref 8 failed: GNTST_bad_gntref",
    )
    .await
    .unwrap();
    assert_eq!(
        xs.read("/local/domain/0/error/backend/t-error/1/3/error")
            .await
            .unwrap(),
        "mapping ring-ref 8 failed: GNTST_bad_gntref"
    );
    assert_eq!(
        read_error(&xs, &d, Side::Backend).await.unwrap().as_deref(),
        Some("mapping ring-ref 8 failed: GNTST_bad_gntref")
    );
    assert_eq!(read_error(&xs, &d, Side::Frontend).await.unwrap(), None);
    // Too long: cut, at a character boundary.
    let long = "é".repeat(3000);
    write_error(&xs, &d, Side::Frontend, &long).await.unwrap();
    let got = xs
        .read("/local/domain/1/error/device/t-error/3/error")
        .await
        .unwrap();
    assert!(
        long.starts_with(&got) && got.len() == ERROR_MAX,
        "{}",
        got.len()
    );
    clear_error(&xs, &d, Side::Frontend).await.unwrap();
    clear_error(&xs, &d, Side::Frontend).await.unwrap(); // nothing there: fine
    assert_eq!(
        xs.read_opt("/local/domain/1/error/device/t-error/3")
            .await
            .unwrap(),
        None
    );
    // The frontend domain may write its own error node.
    let fe = domu(1).await;
    let p = d.error_path(Side::Frontend);
    raw(&fe, XsType::Write, &[&p, "bad backend"]).await.unwrap();
    assert_eq!(
        read_error(&xs, &d, Side::Frontend)
            .await
            .unwrap()
            .as_deref(),
        Some("bad backend")
    );
}

#[tokio::test]
async fn create_device_writes_xl_nodes_and_permissions() {
    let xs = client().await;
    let d = id("t-create", 1, 0);
    let mut spec = DeviceSpec::new(d.clone());
    spec.backend_params = kv(&[("params", "/srv/disk.img"), ("mode", "w")]);
    spec.frontend_params = kv(&[("protocol", "x86_64-abi")]);
    create_device(&xs, &spec).await.unwrap();

    let fe = read_keys(&xs, &d.frontend_dir()).await.unwrap();
    let want: BTreeMap<String, String> = kv(&[
        ("backend", "/local/domain/0/backend/t-create/1/0"),
        ("backend-id", "0"),
        ("protocol", "x86_64-abi"),
        ("state", "1"),
    ])
    .into_iter()
    .collect();
    assert_eq!(fe, want);
    let be = read_keys(&xs, &d.backend_dir()).await.unwrap();
    let want: BTreeMap<String, String> = kv(&[
        ("frontend", "/local/domain/1/device/t-create/0"),
        ("frontend-id", "1"),
        ("mode", "w"),
        ("online", "1"),
        ("params", "/srv/disk.img"),
        ("state", "1"),
    ])
    .into_iter()
    .collect();
    assert_eq!(be, want);

    let fe_perms = vec![
        Perm::new(1, PermAccess::None),
        Perm::new(0, PermAccess::Read),
    ];
    let be_perms = vec![
        Perm::new(0, PermAccess::None),
        Perm::new(1, PermAccess::Read),
    ];
    for k in ["", "/state", "/backend", "/protocol"] {
        let p = format!("{}{k}", d.frontend_dir());
        assert_eq!(xs.get_perms(&p).await.unwrap(), fe_perms, "{p}");
    }
    for k in ["", "/state", "/online", "/params"] {
        let p = format!("{}{k}", d.backend_dir());
        assert_eq!(xs.get_perms(&p).await.unwrap(), be_perms, "{p}");
    }

    // The frontend domain reads the backend dir but may not write it; it
    // writes its own.
    let dom1 = domu(1).await;
    let be_state = format!("{}/state", d.backend_dir());
    assert_eq!(raw(&dom1, XsType::Read, &[&be_state]).await.unwrap(), "1");
    assert_eq!(
        raw(
            &dom1,
            XsType::Read,
            &[&format!("{}/params", d.backend_dir())]
        )
        .await
        .unwrap(),
        "/srv/disk.img"
    );
    assert_eq!(
        raw(&dom1, XsType::Write, &[&be_state, "4"]).await,
        Err(XsErrno::Eacces)
    );
    assert_eq!(
        raw(
            &dom1,
            XsType::Write,
            &[&format!("{}/x", d.backend_dir()), "1"]
        )
        .await,
        Err(XsErrno::Eacces)
    );
    let fe_state = format!("{}/state", d.frontend_dir());
    raw(&dom1, XsType::Write, &[&fe_state, "3"]).await.unwrap();
    raw(
        &dom1,
        XsType::Write,
        &[&format!("{}/ring-ref", d.frontend_dir()), "8"],
    )
    .await
    .unwrap();
    assert_eq!(
        xs.get_perms(&format!("{}/ring-ref", d.frontend_dir()))
            .await
            .unwrap(),
        fe_perms,
        "a key the frontend adds inherits the dir's permissions"
    );
    // Another domain sees neither.
    let dom2 = domu(2).await;
    assert_eq!(
        raw(&dom2, XsType::Read, &[&be_state]).await,
        Err(XsErrno::Eacces)
    );
    assert_eq!(
        raw(&dom2, XsType::Read, &[&fe_state]).await,
        Err(XsErrno::Eacces)
    );

    // Again: Exists, and nothing changed.
    let e = create_device(&xs, &spec).await.unwrap_err();
    assert!(
        matches!(&e, XenbusError::Exists { id, .. } if *id == d),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        "device t-create/1/0 exists already (/local/domain/1/device/t-create/0 is there)"
    );
    assert_eq!(
        read_state(&xs, &d.frontend_dir()).await.unwrap(),
        XenbusState::Initialised
    );
}

#[tokio::test]
async fn create_device_refuses_bad_params_and_unknown_domains() {
    let xs = client().await;
    let mut spec = DeviceSpec::new(id("t-refuse", 1, 0));
    spec.backend_params = kv(&[("state", "4")]);
    let e = create_device(&xs, &spec).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "bad device parameter \"state\": the toolstack writes this key itself"
    );
    for bad in ["", "/abs", "a//b", "a b", "end/"] {
        spec.backend_params = kv(&[(bad, "1")]);
        let e = create_device(&xs, &spec).await.unwrap_err();
        assert!(matches!(e, XenbusError::BadParam { .. }), "{bad:?}: {e}");
    }
    let e = create_device(&xs, &DeviceSpec::new(id("t-refuse", 9, 0)))
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "domain 9 is not running (it is not introduced to xenstore)"
    );
    let nobody = DeviceId::new("t-refuse", 1, 9, 0).unwrap();
    let e = create_device(&xs, &DeviceSpec::new(nobody))
        .await
        .unwrap_err();
    assert!(matches!(e, XenbusError::NoDomain { domid: 9 }), "{e}");
    assert_eq!(
        xs.read_opt("/local/domain/1/device/t-refuse")
            .await
            .unwrap(),
        None,
        "nothing was written"
    );
}

#[tokio::test]
async fn is_domain_introduced_asks_xenstored() {
    let xs = client().await;
    assert!(xs.is_domain_introduced(0).await.unwrap());
    assert!(xs.is_domain_introduced(1).await.unwrap());
    assert!(!xs.is_domain_introduced(77).await.unwrap());
}

#[tokio::test]
async fn list_devices_merges_both_sides() {
    let xs = client().await;
    let a = made(&xs, "t-list", 0).await;
    let b = DeviceId::new("t-list", 2, 1, 0).unwrap(); // backend in domain 1
    create_device(&xs, &DeviceSpec::new(b.clone()))
        .await
        .unwrap();
    switch_state(&xs, &a.backend_dir(), XenbusState::InitWait)
        .await
        .unwrap();
    switch_state(&xs, &a.frontend_dir(), XenbusState::Initialised)
        .await
        .unwrap();
    write_error(&xs, &a, Side::Frontend, "no ring")
        .await
        .unwrap();
    // A half-made device: only its frontend dir, with a bad state.
    xs.write("/local/domain/1/device/t-list/7/backend-id", "0")
        .await
        .unwrap();
    xs.write("/local/domain/1/device/t-list/7/state", "zz")
        .await
        .unwrap();

    let all = list_devices(&xs).await.unwrap();
    let mine: Vec<&DeviceStatus> = all.iter().filter(|s| s.id.kind == "t-list").collect();
    assert_eq!(mine.len(), 3, "{mine:#?}");
    assert_eq!(mine[0].id, a);
    assert_eq!(
        mine[0].backend_state,
        NodeState::State(XenbusState::InitWait)
    );
    assert_eq!(
        mine[0].frontend_state,
        NodeState::State(XenbusState::Initialised)
    );
    assert_eq!(mine[0].online, Some(true));
    assert_eq!(mine[0].frontend_error.as_deref(), Some("no ring"));
    assert_eq!(mine[0].backend_error, None);
    assert_eq!(mine[1].id, id("t-list", 1, 7));
    assert_eq!(mine[1].backend_state, NodeState::Absent);
    assert_eq!(mine[1].frontend_state, NodeState::Bad("zz".into()));
    assert_eq!(mine[1].online, None);
    assert_eq!(mine[2].id, b);
    assert_eq!(
        mine[2].frontend_state,
        NodeState::State(XenbusState::Initialising)
    );
    assert_eq!(
        NodeState::State(XenbusState::Closed).to_string(),
        "Closed (6)"
    );
    assert_eq!(NodeState::Absent.to_string(), "-");

    assert_eq!(free_devid(&xs, "t-list", 1, 0).await.unwrap(), 1);
    assert_eq!(free_devid(&xs, "t-list", 3, 0).await.unwrap(), 0);
    assert_eq!(find_device(&xs, "t-list", 2, 0).await.unwrap(), Some(b));
    assert_eq!(
        find_device(&xs, "t-list", 1, 7).await.unwrap(),
        Some(id("t-list", 1, 7))
    );
    assert_eq!(find_device(&xs, "t-list", 1, 5).await.unwrap(), None);
}

#[tokio::test]
async fn remove_device_waits_for_the_backend_to_close() {
    let xs = client().await;
    let d = made(&xs, "t-remove", 0).await;
    write_error(&xs, &d, Side::Backend, "old trouble")
        .await
        .unwrap();
    // A backend that answers Closing with Closed.
    let (xs2, dir) = (xs.clone(), d.backend_dir());
    let backend = tokio::spawn(async move {
        switch_state(&xs2, &dir, XenbusState::Connected)
            .await
            .unwrap();
        wait_for_state(&xs2, &dir, |s| s == XenbusState::Closing)
            .await
            .unwrap();
        assert_eq!(xs2.read(&format!("{dir}/online")).await.unwrap(), "0");
        switch_state(&xs2, &dir, XenbusState::Closed).await.unwrap();
    });
    wait_for_state(&xs, &d.backend_dir(), |s| s == XenbusState::Connected)
        .await
        .unwrap();
    let opts = RemoveOptions {
        timeout: LONG,
        force: false,
    };
    timeout(LONG, remove_device(&xs, &d, opts))
        .await
        .unwrap()
        .unwrap();
    backend.await.unwrap();
    for p in [
        d.frontend_dir(),
        d.backend_dir(),
        d.error_dir(Side::Backend),
        // The parents left empty go too.
        "/local/domain/1/device/t-remove".into(),
        "/local/domain/0/backend/t-remove".into(),
        "/local/domain/0/error/backend/t-remove".into(),
    ] {
        assert_eq!(xs.read_opt(&p).await.unwrap(), None, "{p}");
    }
    assert!(xs
        .read_opt("/local/domain/1/device")
        .await
        .unwrap()
        .is_some());
    let e = remove_device(&xs, &d, opts).await.unwrap_err();
    assert!(matches!(e, XenbusError::NoDevice { .. }), "{e}");
    assert!(e.to_string().starts_with("no device t-remove/1/0 "), "{e}");
}

#[tokio::test]
async fn remove_device_times_out_naming_the_device_and_its_state() {
    let xs = client().await;
    let d = made(&xs, "t-stuck", 0).await;
    let other = made(&xs, "t-stuck", 1).await;
    let opts = RemoveOptions {
        timeout: Duration::from_millis(300),
        force: false,
    };
    let e = remove_device(&xs, &d, opts).await.unwrap_err();
    assert!(
        matches!(&e, XenbusError::Stuck { id, state: XenbusState::Closing, .. } if *id == d),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        "device t-stuck/1/0: backend still Closing (5) after 300ms, not Closed; \
         nothing removed (force removes it anyway)"
    );
    // Asked to close, not removed.
    let be = read_keys(&xs, &d.backend_dir()).await.unwrap();
    assert_eq!((be["state"].as_str(), be["online"].as_str()), ("5", "0"));
    assert!(xs.read_opt(&d.frontend_dir()).await.unwrap().is_some());
    // Force: at once; the sibling device and the parents it needs stay.
    let force = RemoveOptions {
        force: true,
        ..opts
    };
    write_error(&xs, &d, Side::Frontend, "gone").await.unwrap();
    timeout(Duration::from_secs(2), remove_device(&xs, &d, force))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(xs.read_opt(&d.frontend_dir()).await.unwrap(), None);
    assert_eq!(xs.read_opt(&d.backend_dir()).await.unwrap(), None);
    assert_eq!(
        xs.read_opt(&d.error_dir(Side::Frontend)).await.unwrap(),
        None
    );
    assert_eq!(
        read_state(&xs, &other.backend_dir()).await.unwrap(),
        XenbusState::Initialising
    );
    assert!(xs
        .read_opt("/local/domain/0/backend/t-stuck/1")
        .await
        .unwrap()
        .is_some());
}

#[tokio::test]
async fn a_backend_already_closed_or_gone_is_removed_without_waiting() {
    let xs = client().await;
    let d = made(&xs, "t-gone", 0).await;
    switch_state(&xs, &d.backend_dir(), XenbusState::Closed)
        .await
        .unwrap();
    let opts = RemoveOptions {
        timeout: Duration::from_secs(30),
        force: false,
    };
    timeout(Duration::from_secs(5), remove_device(&xs, &d, opts))
        .await
        .unwrap()
        .unwrap();
    // Only the frontend dir left (a backend that removed its own dir).
    let d = made(&xs, "t-gone", 1).await;
    xs.rm(&d.backend_dir()).await.unwrap();
    timeout(Duration::from_secs(5), remove_device(&xs, &d, opts))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(xs.read_opt(&d.frontend_dir()).await.unwrap(), None);
}

/// Compiles only if every helper's future can be spawned (is `Send` for
/// any lifetime), as daemons spawn them.
#[allow(dead_code)]
fn every_helper_can_be_spawned(xs: XsClient, d: DeviceId) {
    let dir = d.backend_dir();
    let (x, i, p) = (xs.clone(), d.clone(), dir.clone());
    tokio::spawn(async move {
        read_state(&x, &p).await?;
        switch_state(&x, &p, XenbusState::Closed).await?;
        watch_state(&x, &p).await?.next().await?;
        wait_for_state(&x, &p, |_| true).await?;
        publish(&x, &p, &[]).await?;
        read_keys(&x, &p).await?;
        write_error(&x, &i, Side::Backend, "m").await?;
        read_error(&x, &i, Side::Backend).await?;
        clear_error(&x, &i, Side::Backend).await
    });
    tokio::spawn(async move {
        create_device(&xs, &DeviceSpec::new(d.clone())).await?;
        list_devices(&xs).await?;
        free_devid(&xs, "chan", 1, 0).await?;
        find_device(&xs, "chan", 1, 0).await?;
        remove_device(&xs, &d, RemoveOptions::default()).await
    });
}
