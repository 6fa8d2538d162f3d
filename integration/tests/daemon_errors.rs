//! The daemons say what is wrong when they cannot start, and exit 1 (2 for
//! bad usage).

use std::process::Command;

fn node() -> Command {
    Command::new(env!("CARGO_BIN_EXE_xenring-node"))
}

fn run(role: &str, args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut c = node();
    c.arg(role).args(args);
    for v in [
        "XENRING_SIM_SOCKET",
        "XENRING_DOMID",
        "XENSTORED_PATH",
        "XENRING_PLATFORM",
        "XENRING_SOCKET_DIR",
    ] {
        c.env_remove(v);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("run xenring-node");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn daemons_explain_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("nothing.sock");
    let sock = sock.to_str().unwrap();
    for role in ["backend", "frontend"] {
        let (code, err) = run(role, &[], &[]);
        assert_eq!(code, 1, "{role}: {err}");
        assert!(err.contains("--sim-socket"), "{role}: {err}");

        let (code, err) = run(role, &["--sim-socket", sock, "--domid", "0"], &[]);
        assert_eq!(code, 1, "{role}: {err}");
        assert!(err.contains("is the sim host running?"), "{role}: {err}");
        assert!(err.contains(sock), "{role}: names the socket: {err}");

        let (code, err) = run(role, &["--platform", "xen"], &[]);
        assert_eq!(code, 1, "{role}: {err}");
        assert!(err.contains("platform xen"), "{role}: {err}");

        let (code, err) = run(role, &["--platform", "vmware"], &[]);
        assert_eq!(code, 2, "{role}: {err}");
        assert!(err.contains("vmware"), "{role}: {err}");

        let (code, err) = run(
            role,
            &["--devices", "floppy", "--sim-socket", sock, "--domid", "0"],
            &[],
        );
        assert_eq!(code, 1, "{role}: {err}");
        assert!(err.contains("floppy"), "{role}: {err}");
    }
}
