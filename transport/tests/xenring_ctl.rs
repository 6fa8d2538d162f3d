//! The `xenring-ctl` binary against an embedded xenstored: add, list,
//! remove (stuck, forced), bad input, no XenStore.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use xenring::xenstore::{Quotas, Xenstored, ENV_XENSTORED_PATH};

struct Env {
    _dir: tempfile::TempDir,
    _xsd: Xenstored,
    dom0: PathBuf,
}

/// A xenstored knowing domains 1 and 2.
fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let xsd = Xenstored::start(dir.path().join("xs"), Quotas::default()).unwrap();
    xsd.introduce_domain(1);
    xsd.introduce_domain(2);
    let dom0 = xsd.socket_path(0).unwrap();
    Env {
        _dir: dir,
        _xsd: xsd,
        dom0,
    }
}

/// Runs `xenring-ctl ARGS` with `XENSTORED_PATH` set to `xenstore`.
fn ctl_at(xenstore: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xenring-ctl"))
        .args(args)
        .env(ENV_XENSTORED_PATH, xenstore)
        .env_remove("XENRING_SIM_SOCKET")
        .env("RUST_LOG", "off")
        .output()
        .unwrap()
}

/// Writes a node as dom0 (over a raw connection).
fn write_node(e: &Env, path: &str, value: &str) {
    use xenring::abi::xs_wire::XsType;
    use xenring::xenstore::{conn::XsConn, XsMsg};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = XsConn::connect(&e.dom0, None).await.unwrap();
        let m = XsMsg::with_strings(
            XsType::Write,
            0,
            0,
            &[path.as_bytes(), value.as_bytes()],
            false,
        )
        .unwrap();
        let r = c.request(m).await.unwrap();
        assert_eq!(r.error_name(), None);
    });
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs a command that must succeed; its stdout.
fn ok(e: &Env, args: &[&str]) -> String {
    let out = ctl_at(&e.dom0, args);
    assert!(
        out.status.success(),
        "xenring-ctl {args:?}: {:?}\n{}",
        out.status,
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Runs a command that must fail with `code`; its stderr.
fn fails(e: &Env, args: &[&str], code: i32) -> String {
    let out = ctl_at(&e.dom0, args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "xenring-ctl {args:?}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stderr)
}

/// The list's rows (without the header), each split into its columns.
fn rows(e: &Env) -> Vec<Vec<String>> {
    let out = ok(e, &["device", "list"]);
    let mut lines = out.lines();
    let head = lines.next().unwrap();
    assert!(
        head.starts_with("DEVICE")
            && ["BACKEND STATE", "FRONTEND STATE", "ONLINE", "ERROR"]
                .iter()
                .all(|c| head.contains(c)),
        "{head}"
    );
    lines
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(String::from)
                .collect()
        })
        .collect()
}

#[test]
fn add_list_and_remove_devices() {
    let e = env();
    assert!(rows(&e).is_empty());
    assert_eq!(
        ok(&e, &["device", "add", "chan", "--frontend", "1"]),
        "added chan/1/0 (backend domain 0)\n"
    );
    assert_eq!(
        ok(
            &e,
            &[
                "device",
                "add",
                "chan",
                "--frontend",
                "1",
                "--backend-param",
                "path=/run/chan.sock",
                "--frontend-param",
                "name=console",
            ]
        ),
        "added chan/1/1 (backend domain 0)\n",
        "the lowest free number"
    );
    assert_eq!(
        ok(
            &e,
            &[
                "device",
                "add",
                "vbd",
                "--frontend",
                "2",
                "--devid",
                "51712"
            ]
        ),
        "added vbd/2/51712 (backend domain 0)\n"
    );
    let err = fails(
        &e,
        &["device", "add", "chan", "--frontend", "1", "--devid", "1"],
        1,
    );
    assert!(err.contains("device chan/1/1 exists already"), "{err}");
    let err = fails(&e, &["device", "add", "chan", "--frontend", "7"], 1);
    assert!(err.contains("domain 7 is not running"), "{err}");
    let err = fails(
        &e,
        &[
            "device",
            "add",
            "chan",
            "--frontend",
            "1",
            "--backend-param",
            "state=4",
        ],
        1,
    );
    assert!(
        err.contains("the toolstack writes this key itself"),
        "{err}"
    );

    let r = rows(&e);
    let want = |dev: &str| {
        vec![
            dev.to_string(),
            "0".into(),
            "Initialising (1)".into(),
            "Initialising (1)".into(),
            "1".into(),
            "-".into(),
        ]
    };
    assert_eq!(r, [want("chan/1/0"), want("chan/1/1"), want("vbd/2/51712")]);

    // Nobody serves the backend: removing without force times out, names
    // the device and its state, and removes nothing.
    let err = fails(&e, &["device", "remove", "chan/1/0", "--timeout", "0.3"], 1);
    assert!(
        err.contains("device chan/1/0: backend still Closing (5) after 300ms"),
        "{err}"
    );
    let r = rows(&e);
    assert_eq!(r[0][2..5], ["Closing (5)", "Initialising (1)", "0"]);

    assert_eq!(
        ok(&e, &["device", "remove", "chan/1/0", "--force"]),
        "removed chan/1/0\n"
    );
    let listed: Vec<String> = rows(&e).into_iter().map(|r| r[0].clone()).collect();
    assert_eq!(listed, ["chan/1/1", "vbd/2/51712"]);
    // Errors show on one line, the backend's first.
    write_node(
        &e,
        "/local/domain/1/error/device/chan/1/error",
        "no ring\nat all",
    );
    write_node(
        &e,
        "/local/domain/0/error/backend/chan/1/1/error",
        &"x".repeat(100),
    );
    let r = rows(&e);
    assert_eq!(
        r[0][5],
        format!("backend: {}...; frontend: no ring\\nat all", "x".repeat(60))
    );
    let err = fails(&e, &["device", "remove", "chan/1/0", "--force"], 1);
    assert!(err.contains("no device chan/1/0"), "{err}");
    // The freed number is the lowest free one again.
    assert_eq!(
        ok(&e, &["device", "add", "chan", "--frontend", "1"]),
        "added chan/1/0 (backend domain 0)\n"
    );
}

#[test]
fn bad_input_is_refused_naming_the_argument() {
    let e = env();
    let err = fails(&e, &["device", "remove", "nonsense"], 2);
    assert!(
        err.contains("'nonsense'") && err.contains("expected <kind>/<frontend>/<devid>"),
        "{err}"
    );
    let err = fails(&e, &["device", "remove", "chan/x/0"], 2);
    assert!(
        err.contains("frontend domain \"x\" is not a decimal number"),
        "{err}"
    );
    let err = fails(&e, &["device", "add", "Chan", "--frontend", "1"], 1);
    assert!(err.contains("the device kind \"Chan\" has 'C'"), "{err}");
    let err = fails(
        &e,
        &[
            "device",
            "add",
            "chan",
            "--frontend",
            "1",
            "--backend-param",
            "novalue",
        ],
        2,
    );
    assert!(err.contains("expected KEY=VALUE"), "{err}");
    let err = fails(
        &e,
        &["device", "remove", "chan/1/0", "--timeout", "soon"],
        2,
    );
    assert!(err.contains("expected a number of seconds"), "{err}");
    let err = fails(&e, &["device", "add", "chan"], 2);
    assert!(err.contains("--frontend"), "{err}");
}

#[test]
fn no_xenstore_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing.sock");
    let out = ctl_at(&missing, &["device", "list"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert_eq!(
        err.trim_end(),
        format!(
            "xenring-ctl: no XenStore at {}: no such socket; is the sim host running?",
            missing.display()
        )
    );
    // A socket nobody listens on.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let out = ctl_at(
        &stale,
        &["--xenstore", stale.to_str().unwrap(), "device", "list"],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "no XenStore at {}: connection refused; is the sim host running?",
            stale.display()
        )),
        "{err}"
    );
    let out = ctl_at(&stale, &["--platform", "xen", "device", "list"]);
    assert!(text(&out.stderr).contains("is xenstored running"));
}
