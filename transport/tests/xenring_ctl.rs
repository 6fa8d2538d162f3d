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

/// The key a chan device needs (checked by `add`, served by nobody here).
const TARGET: &str = "target=tcp:127.0.0.1:7";

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
    let img = tempfile::NamedTempFile::new().unwrap();
    let image = format!("params={}", img.path().display());
    assert!(rows(&e).is_empty());
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
                TARGET
            ]
        ),
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
                TARGET,
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
                "51712",
                "--backend-param",
                &image,
            ]
        ),
        "added vbd/2/51712 (backend domain 0)\n"
    );
    let err = fails(
        &e,
        &[
            "device",
            "add",
            "chan",
            "--frontend",
            "1",
            "--devid",
            "1",
            "--backend-param",
            TARGET,
        ],
        1,
    );
    assert!(err.contains("device chan/1/1 exists already"), "{err}");
    let err = fails(
        &e,
        &[
            "device",
            "add",
            "chan",
            "--frontend",
            "7",
            "--backend-param",
            TARGET,
        ],
        1,
    );
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
            TARGET,
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
        ok(
            &e,
            &[
                "device",
                "add",
                "chan",
                "--frontend",
                "1",
                "--backend-param",
                TARGET
            ]
        ),
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

/// The devices in XenStore (their names only).
fn listed(e: &Env) -> Vec<String> {
    rows(e).into_iter().map(|r| r[0].clone()).collect()
}

#[test]
fn add_checks_the_kind_and_its_keys_before_writing() {
    let e = env();
    let err = fails(&e, &["device", "add", "echo", "--frontend", "1"], 1);
    assert!(
        err.contains("unknown kind \"echo\"") && err.contains("--custom"),
        "{err}"
    );
    let err = fails(&e, &["device", "add", "chan", "--frontend", "1"], 1);
    assert!(err.contains("needs --backend-param target="), "{err}");
    let err = fails(
        &e,
        &[
            "device",
            "add",
            "chan",
            "--frontend",
            "1",
            "--backend-param",
            "target=tcp:x:0",
        ],
        1,
    );
    assert!(err.contains("port \"0\""), "{err}");
    let err = fails(&e, &["device", "add", "vbd", "--frontend", "1"], 1);
    assert!(err.contains("needs --backend-param params=PATH"), "{err}");
    let err = fails(
        &e,
        &[
            "device",
            "add",
            "vbd",
            "--frontend",
            "1",
            "--backend-param",
            "params=/nonexistent.img",
        ],
        1,
    );
    assert!(
        err.contains("cannot use the image /nonexistent.img") && err.contains("No such file"),
        "{err}"
    );
    let err = fails(
        &e,
        &[
            "device",
            "add",
            "vif",
            "--frontend",
            "1",
            "--backend-param",
            "mtu=9",
        ],
        1,
    );
    assert!(err.contains("--backend-param mtu"), "{err}");
    assert!(listed(&e).is_empty(), "nothing written for a refused add");
    // A kind served by one's own daemon.
    assert_eq!(
        ok(
            &e,
            &["device", "add", "echo", "--frontend", "1", "--custom"]
        ),
        "added echo/1/0 (backend domain 0)\n"
    );
    assert_eq!(listed(&e), ["echo/1/0"]);
}

/// Starts `xenring-ctl ARGS` in the background.
fn spawn(e: &Env, args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_xenring-ctl"))
        .args(args)
        .env(ENV_XENSTORED_PATH, &e.dom0)
        .env_remove("XENRING_SIM_SOCKET")
        .env("RUST_LOG", "off")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until `device` is listed.
fn until_listed(e: &Env, device: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !listed(e).iter().any(|d| d == device) {
        assert!(std::time::Instant::now() < deadline, "{device} never added");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn add_wait_reports_connected_failed_or_timed_out() {
    let e = env();
    fn add(fe: &str) -> Vec<&str> {
        vec![
            "device",
            "add",
            "echo",
            "--custom",
            "--frontend",
            fe,
            "--wait",
            "--timeout",
            "20",
        ]
    }

    // Both ends come up: exit 0.
    let child = spawn(&e, &add("1"));
    until_listed(&e, "echo/1/0");
    write_node(&e, "/local/domain/0/backend/echo/1/0/state", "4");
    write_node(&e, "/local/domain/1/device/echo/0/state", "4");
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "added echo/1/0 (backend domain 0)\nconnected echo/1/0\n"
    );

    // An end writes an error node: exit 1 with the whole message.
    let child = spawn(&e, &add("2"));
    until_listed(&e, "echo/2/0");
    let long = format!("cannot map the ring: {}", "detail ".repeat(20));
    write_node(&e, "/local/domain/2/error/device/echo/0/error", &long);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("echo/2/0 failed") && err.contains(&format!("frontend error:  {long}")),
        "{err}"
    );

    // Nobody serves it: exit 1 at the timeout, with both states.
    let out = ctl_at(
        &e.dom0,
        &[
            "device",
            "add",
            "echo",
            "--custom",
            "--frontend",
            "1",
            "--wait",
            "--timeout",
            "0.3",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("echo/1/1 not connected within 0.3 s")
            && err.contains("backend state:  Initialising (1)")
            && err.contains("frontend state: Initialising (1)"),
        "{err}"
    );
}

#[test]
fn list_and_show_in_text_and_json() {
    let e = env();
    ok(
        &e,
        &[
            "device",
            "add",
            "chan",
            "--frontend",
            "1",
            "--backend-param",
            TARGET,
        ],
    );
    write_node(
        &e,
        "/local/domain/0/error/backend/chan/1/0/error",
        "bad \"target\"\n",
    );
    let json = ok(&e, &["device", "list", "--json"]);
    assert_eq!(
        json.trim_end(),
        r#"[{"device":"chan/1/0","kind":"chan","frontend":1,"backend":0,"devid":0,"backend_state":{"state":1,"name":"Initialising"},"frontend_state":{"state":1,"name":"Initialising"},"online":true,"backend_error":"bad \"target\"\n","frontend_error":null,"connected":false}]"#
    );
    let shown = ok(&e, &["device", "show", "chan/1/0"]);
    for want in [
        "device:         chan/1/0 (backend domain 0)",
        "backend state:  Initialising (1)",
        "backend error:  bad \"target\"",
        "backend dir: /local/domain/0/backend/chan/1/0",
        "  target = \"tcp:127.0.0.1:7\"",
        "frontend dir: /local/domain/1/device/chan/0",
        "  backend-id = \"0\"",
    ] {
        assert!(shown.contains(want), "{want:?} in\n{shown}");
    }
    let json = ok(&e, &["device", "show", "chan/1/0", "--json"]);
    assert!(
        json.contains(r#""backend_keys":{"frontend":"/local/domain/1/device/chan/0","frontend-id":"1","online":"1","state":"1","target":"tcp:127.0.0.1:7"}"#),
        "{json}"
    );
    let err = fails(&e, &["device", "show", "chan/1/9"], 1);
    assert!(err.contains("no device chan/1/9"), "{err}");
}
