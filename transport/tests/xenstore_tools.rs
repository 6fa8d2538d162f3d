//! Debian's xenstore tools (package xenstore-utils, libxenstore 4.17)
//! against the embedded xenstored through `XENSTORED_PATH`, unchanged: if
//! the tools work, the wire protocol, the payload conventions and the
//! permission rules match C xenstored's closely enough.
//!
//! A missing tool fails the test with a message saying what to install.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use xenring::xenstore::{Quotas, Xenstored};

const PATIENCE: Duration = Duration::from_secs(30);

/// A xenstored with domain 1 introduced.
struct Env {
    _dir: tempfile::TempDir,
    xs: Xenstored,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let xs = Xenstored::start(dir.path().join("xenstore"), Quotas::default()).unwrap();
    xs.introduce_domain(1);
    Env { _dir: dir, xs }
}

fn find_tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} not found: these tests run Debian's xenstore tools; \
                 install them with `apt-get install xenstore-utils`"
            )
        })
}

impl Env {
    /// `tool args...` speaking as domain `domid`.
    fn cmd(&self, domid: u16, tool: &str, args: &[&str]) -> Command {
        let mut c = Command::new(find_tool(tool));
        c.args(args)
            .env("XENSTORED_PATH", self.xs.socket_path(domid).unwrap())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// Runs to completion (killed after [`PATIENCE`]).
    fn run(&self, domid: u16, tool: &str, args: &[&str]) -> Output {
        let child = self.cmd(domid, tool, args).spawn().unwrap();
        wait(child, &format!("{tool} {args:?}"))
    }

    /// Runs and expects success; its stdout.
    fn ok(&self, domid: u16, tool: &str, args: &[&str]) -> String {
        let out = self.run(domid, tool, args);
        assert!(
            out.status.success(),
            "{tool} {args:?} as dom{domid} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs and expects failure; its stderr.
    fn fails(&self, domid: u16, tool: &str, args: &[&str]) -> String {
        let out = self.run(domid, tool, args);
        assert!(
            !out.status.success(),
            "{tool} {args:?} as dom{domid} succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).unwrap()
    }
}

fn wait(mut child: Child, what: &str) -> Output {
    fn drain(r: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut v);
            }
            v
        })
    }
    let o = drain(child.stdout.take());
    let e = drain(child.stderr.take());
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish in {PATIENCE:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output {
        status,
        stdout: o.join().unwrap(),
        stderr: e.join().unwrap(),
    }
}

#[test]
fn write_read_exists_rm() {
    let e = env();
    e.ok(
        0,
        "xenstore-write",
        &["/tool/t/a", "alpha", "/tool/t/b", "beta"],
    );
    assert_eq!(
        e.ok(0, "xenstore-read", &["/tool/t/a", "/tool/t/b"]),
        "alpha\nbeta\n"
    );
    assert_eq!(
        e.ok(0, "xenstore-read", &["-p", "/tool/t/a"]),
        "/tool/t/a: alpha\n"
    );
    assert_eq!(
        e.ok(0, "xenstore-read", &["/tool/t"]),
        "\n",
        "parents are empty"
    );
    let err = e.fails(0, "xenstore-read", &["/tool/t/none"]);
    assert!(err.contains("/tool/t/none"), "{err}");
    e.ok(0, "xenstore-exists", &["/tool/t/a"]);
    e.fails(0, "xenstore-exists", &["/tool/t/none"]);
    e.ok(0, "xenstore-rm", &["/tool/t/a"]);
    e.fails(0, "xenstore-exists", &["/tool/t/a"]);
    e.ok(0, "xenstore-rm", &["/tool/t/none"]);
    e.fails(0, "xenstore-rm", &["/tool/none/none"]);
    e.ok(0, "xenstore-rm", &["/tool/t"]);
    e.fails(0, "xenstore-exists", &["/tool/t/b"]);
    e.fails(0, "xenstore-write", &["/bad path", "x"]);
}

#[test]
fn ls_and_list() {
    let e = env();
    e.ok(
        0,
        "xenstore-write",
        &["/tree/one", "1", "/tree/two/deep", "2"],
    );
    assert_eq!(e.ok(0, "xenstore-list", &["/tree"]), "one\ntwo\n");
    let ls = e.ok(0, "xenstore-ls", &["/tree"]);
    assert_eq!(ls, "one = \"1\"\ntwo = \"\"\n deep = \"2\"\n");
    let full = e.ok(0, "xenstore-ls", &["-f", "/tree"]);
    assert!(full.contains("/tree/two/deep = \"2\""), "{full}");
    let perms = e.ok(0, "xenstore-ls", &["-p", "/local/domain/1"]);
    assert!(perms.contains("name = \"domain-1\""), "{perms}");
    assert!(perms.contains("(n0,r1)"), "{perms}");
    assert!(perms.contains("data = \"\""), "{perms}");
    assert!(perms.contains("(n1)"), "{perms}");
}

#[test]
fn a_long_directory_is_listed_through_directory_part() {
    let e = env();
    let names: Vec<String> = (0..300)
        .map(|i| format!("a-rather-long-child-name-number-{i:03}"))
        .collect();
    let mut args = Vec::new();
    for n in &names {
        args.push(format!("/long/{n}"));
        args.push("v".to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    e.ok(0, "xenstore-write", &args);
    let listed = e.ok(0, "xenstore-list", &["/long"]);
    let listed: Vec<&str> = listed.lines().collect();
    assert_eq!(listed, names, "all {} children, in order", names.len());
}

#[test]
fn chmod_gives_and_takes_access() {
    let e = env();
    e.ok(0, "xenstore-write", &["/perm/a/b", "secret"]);
    e.fails(1, "xenstore-read", &["/perm/a/b"]);
    e.ok(0, "xenstore-chmod", &["/perm/a/b", "n0", "r1"]);
    assert_eq!(e.ok(1, "xenstore-read", &["/perm/a/b"]), "secret\n");
    e.fails(1, "xenstore-write", &["/perm/a/b", "mine"]);
    e.ok(0, "xenstore-chmod", &["-r", "/perm", "n0", "b1"]);
    e.ok(1, "xenstore-write", &["/perm/a/b", "mine"]);
    assert_eq!(e.ok(0, "xenstore-read", &["/perm/a/b"]), "mine\n");
    let ls = e.ok(0, "xenstore-ls", &["-p", "/perm"]);
    assert_eq!(ls.matches("(n0,b1)").count(), 2, "{ls}");
    // The domain may not give its node away, nor change dom0's.
    e.ok(1, "xenstore-write", &["data/own", "x"]);
    e.ok(1, "xenstore-chmod", &["data/own", "n1", "r2"]);
    e.fails(1, "xenstore-chmod", &["data/own", "n2"]);
    e.fails(1, "xenstore-chmod", &["/perm/a/b", "n1"]);
    e.fails(0, "xenstore-chmod", &["/perm/a/b", "x1"]);
}

#[test]
fn a_domu_is_refused_what_its_permissions_forbid() {
    let e = env();
    e.ok(
        0,
        "xenstore-write",
        &["/local/domain/0/data/private", "dom0 only"],
    );
    e.fails(1, "xenstore-read", &["/local/domain/0/data/private"]);
    e.fails(1, "xenstore-read", &["/local/domain/0/name"]);
    e.fails(
        1,
        "xenstore-write",
        &["/local/domain/0/data/private", "evil"],
    );
    e.fails(1, "xenstore-write", &["/local/domain/1/name", "evil"]);
    e.fails(1, "xenstore-rm", &["/local/domain/0/data/private"]);
    let err = e.fails(1, "xenstore-ls", &["/"]);
    assert!(err.contains("Permission denied"), "{err}");
    assert_eq!(
        e.ok(0, "xenstore-read", &["/local/domain/0/data/private"]),
        "dom0 only\n"
    );
    assert_eq!(
        e.ok(0, "xenstore-read", &["/local/domain/1/name"]),
        "domain-1\n"
    );
    // What it was given: its home to read, its own directories to write.
    assert_eq!(
        e.ok(1, "xenstore-read", &["domid", "name"]),
        "1\ndomain-1\n"
    );
    e.ok(1, "xenstore-write", &["data/mine", "hello"]);
    assert_eq!(
        e.ok(0, "xenstore-read", &["/local/domain/1/data/mine"]),
        "hello\n"
    );
    e.fails(2, "xenstore-read", &["/local/domain/1/data/mine"]);
}

/// Spawns `xenstore-watch -n <n> <path>` as `domid`, waits for its first
/// line (the event fired when the watch is set), runs `then`, and returns
/// every line it printed.
fn watch_lines(e: &Env, domid: u16, n: usize, path: &str, then: impl FnOnce()) -> Vec<String> {
    let count = n.to_string();
    let mut child = e
        .cmd(domid, "xenstore-watch", &["-n", &count, path])
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = rx
        .recv_timeout(PATIENCE)
        .expect("xenstore-watch printed nothing");
    then();
    let mut lines = vec![first];
    while lines.len() < n {
        match rx.recv_timeout(PATIENCE) {
            Ok(l) => lines.push(l),
            Err(_) => {
                let _ = child.kill();
                panic!("xenstore-watch saw only {lines:?}");
            }
        }
    }
    let out = wait(child, "xenstore-watch");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    lines
}

#[test]
fn watch_sees_writes_and_removals() {
    let e = env();
    let lines = watch_lines(&e, 0, 3, "/watched", || {
        e.ok(0, "xenstore-write", &["/watched/x", "1"]);
        e.ok(0, "xenstore-rm", &["/watched/x"]);
    });
    assert_eq!(lines, ["/watched", "/watched/x", "/watched/x"]);
}

#[test]
fn a_domu_watch_is_relative_and_sees_only_what_it_may_read() {
    let e = env();
    let lines = watch_lines(&e, 1, 4, "data", || {
        // Inherits data's n1: domain 1 owns it and hears of it.
        e.ok(0, "xenstore-write", &["/local/domain/1/data/hidden", "h"]);
        // Losing access still fires, once.
        e.ok(0, "xenstore-chmod", &["/local/domain/1/data/hidden", "n0"]);
        // Neither this node nor its parent is readable by domain 1: silent.
        e.ok(
            0,
            "xenstore-write",
            &["/local/domain/1/data/hidden/deeper", "h"],
        );
        e.ok(1, "xenstore-write", &["data/seen", "s"]);
    });
    assert_eq!(lines, ["data", "data/hidden", "data/hidden", "data/seen"]);
}

#[test]
fn xenring_sim_exec_points_the_tools_at_the_domain_socket() {
    use xenring::sim::{HostConfig, SimDomain, SimHost};
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock");
    let host = SimHost::start(&socket, HostConfig::default()).unwrap();
    let _d1 = SimDomain::connect(&socket, 1).unwrap();
    let exec = |domid: &str, cmd: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_xenring-sim"));
        c.arg("--socket")
            .arg(&socket)
            .args(["exec", "--domid", domid, "--"])
            .args(cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        wait(c.spawn().unwrap(), &format!("exec {cmd:?}"))
    };
    let tool = |name: &str| find_tool(name).to_string_lossy().into_owned();
    let out = exec("1", &["sh", "-c", "echo $XENSTORED_PATH"]);
    let expect = host.xenstore_path(1).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        expect.to_str().unwrap()
    );
    let out = exec("1", &[&tool("xenstore-read"), "domid", "name"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"1\ndomain-1\n");
    let out = exec("1", &[&tool("xenstore-read"), "/local/domain/0/name"]);
    assert!(!out.status.success(), "dom1 read dom0's name");
    let out = exec("0", &[&tool("xenstore-read"), "/local/domain/0/name"]);
    assert_eq!(out.stdout, b"Domain-0\n");
    host.shutdown();
}

#[test]
fn a_released_domain_leaves_no_home_and_comes_back_with_a_fresh_one() {
    let e = env();
    e.ok(1, "xenstore-write", &["data/x", "v"]);
    e.xs.release_domain(1);
    let ls = e.ok(0, "xenstore-ls", &["/local/domain"]);
    assert!(!ls.lines().any(|l| l.starts_with("1 ")), "{ls}");
    e.fails(0, "xenstore-exists", &["/local/domain/1"]);
    e.xs.introduce_domain(1);
    assert_eq!(
        e.ok(1, "xenstore-read", &["name", "domid"]),
        "domain-1\n1\n"
    );
    e.fails(1, "xenstore-read", &["data/x"]);
    assert!(e.xs.leftovers().is_empty(), "{:?}", e.xs.leftovers());
}

#[test]
fn c_xenstored_refusals_the_tools_report() {
    let e = env();
    e.ok(0, "xenstore-write", &["/tool/p", ""]);
    // An owner that does not exist (C: ENOENT), for dom0 too.
    let err = e.fails(0, "xenstore-chmod", &["/tool/p", "n7"]);
    assert!(err.contains("No such file or directory"), "{err}");
    e.ok(0, "xenstore-chmod", &["/tool/p", "n1"]);
    // Permissions of special paths other than the two (C: EINVAL).
    let err = e.fails(0, "xenstore-chmod", &["@foo", "n0"]);
    assert!(err.contains("Invalid argument"), "{err}");
    e.ok(0, "xenstore-chmod", &["@releaseDomain", "n0", "r1"]);
    // A path of more than 2048 bytes outside a home (C: EINVAL), dom0's.
    let long = format!("/tool/{}", "a".repeat(2048 - 5));
    let err = e.fails(0, "xenstore-write", &[&long, "v"]);
    assert!(err.contains("could not write"), "{err}");
    e.ok(0, "xenstore-write", &[&long[..2048], "v"]);
}
