//! Daemons never outlive what they depend on, and there is one of each:
//! a daemon whose domain is destroyed, or whose simulated host stops or is
//! killed, exits 1 saying so (before, it idled or retried forever); a
//! second daemon of the same domain, side and device kind is refused,
//! naming the first one's pid (before, the two fought over the devices).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use xenring::sim::HostConfig;
use xenring_examples::system::{Daemon, System};

fn node() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_xenring-node"))
}

/// Waits until `log` (a file) contains `what`; fails after 30 s.
fn wait_log(log: &Path, what: &str) {
    let t = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(what) {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "no {what:?} in {}:\n{text}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for `d` to exit on its own (it is killed after 30 s, and then
/// this fails); its exit status and log.
fn exit_of(d: Daemon) -> (ExitStatus, String) {
    let log = d.log_path().to_path_buf();
    let st = d.wait(Duration::from_secs(30)).unwrap_or_else(|e| {
        panic!(
            "{e:#}; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    (st, std::fs::read_to_string(&log).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_of_a_domain_side_and_kind_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let sys = System::start(dir.path(), node(), HostConfig::default()).await?;
    sys.create_domain(1)?;
    let fe = sys.spawn_frontend(1, &[])?;
    let be = sys.spawn_backend(0, &[])?;
    wait_log(fe.log_path(), "daemon started");
    wait_log(be.log_path(), "daemon started");

    let fe2 = sys.spawn_frontend(1, &[])?;
    let (st, log) = exit_of(fe2);
    assert_eq!(st.code(), Some(1), "{log}");
    assert!(
        log.contains(&format!("already served by pid {}", fe.pid()))
            && log.contains("frontend chan devices of domain 1"),
        "{log}"
    );
    // One kind in common is enough to be refused.
    let be2 = sys.spawn_backend(0, &["--devices", "vbd"])?;
    let (st, log) = exit_of(be2);
    assert_eq!(st.code(), Some(1), "{log}");
    assert!(
        log.contains(&format!("already served by pid {}", be.pid())),
        "{log}"
    );
    // Another domain's frontend is not refused.
    sys.create_domain(2)?;
    let other = sys.spawn_frontend(2, &[])?;
    wait_log(other.log_path(), "daemon started");

    assert!(other.terminate(Duration::from_secs(10))?.success());
    assert!(fe.terminate(Duration::from_secs(10))?.success());
    // The lock goes with its holder: a new frontend starts.
    let fe3 = sys.spawn_frontend(1, &[])?;
    wait_log(fe3.log_path(), "daemon started");
    assert!(fe3.terminate(Duration::from_secs(10))?.success());
    assert!(be.terminate(Duration::from_secs(10))?.success());
    sys.wait_clean(Duration::from_secs(10)).await?;
    sys.shutdown();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_whose_domain_is_destroyed_exits_saying_so() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let sys = System::start(dir.path(), node(), HostConfig::default()).await?;
    sys.create_domain(1)?;
    let fe = sys.spawn_frontend(1, &[])?;
    wait_log(fe.log_path(), "daemon started");
    sys.destroy_domain(1)?;
    let (st, log) = exit_of(fe);
    assert_eq!(st.code(), Some(1), "{log}");
    assert!(log.contains("domain 1 has been destroyed"), "{log}");
    sys.wait_clean(Duration::from_secs(10)).await?;
    sys.shutdown();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemons_exit_when_their_host_stops() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let sys = System::start(dir.path(), node(), HostConfig::default()).await?;
    sys.create_domain(1)?;
    let fe = sys.spawn_frontend(1, &[])?;
    let be = sys.spawn_backend(0, &[])?;
    wait_log(fe.log_path(), "daemon started");
    wait_log(be.log_path(), "daemon started");
    sys.shutdown();
    for d in [fe, be] {
        let (st, log) = exit_of(d);
        assert_eq!(st.code(), Some(1), "{log}");
        assert!(log.contains("the simulated host has stopped"), "{log}");
    }
    Ok(())
}

/// The node's `host` role: a simulated host in its own process.
struct HostProcess(Child);

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_daemon(dir: &Path, role: &str, domid: u16) -> Daemon {
    let log = dir.join(format!("{role}-dom{domid}.log"));
    let child = Command::new(node())
        .arg(role)
        .env("XENRING_PLATFORM", "sim")
        .env("XENRING_SIM_SOCKET", dir.join("sim.sock"))
        .env("XENRING_DOMID", domid.to_string())
        .env(
            "XENSTORED_PATH",
            dir.join("xenstore").join(format!("{domid}.sock")),
        )
        .env("XENRING_SOCKET_DIR", dir.join(format!("dom{domid}")))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    Daemon::from_child(format!("{role}-dom{domid}"), child, log)
}

#[test]
fn daemons_exit_when_their_host_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let mut host = HostProcess(
        Command::new(node())
            .args([
                "host",
                dir.path().join("sim.sock").to_str().unwrap(),
                "0",
                "1",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(host.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    let fe = spawn_daemon(dir.path(), "frontend", 1);
    let be = spawn_daemon(dir.path(), "backend", 0);
    wait_log(fe.log_path(), "daemon started");
    wait_log(be.log_path(), "daemon started");
    // kill -9: no farewell from the host, the connections just close.
    host.0.kill().unwrap();
    host.0.wait().unwrap();
    for d in [fe, be] {
        let (st, log) = exit_of(d);
        assert_eq!(st.code(), Some(1), "{log}");
        assert!(
            log.contains("can no longer run devices") && log.contains("closed it without a word"),
            "{log}"
        );
    }
}
