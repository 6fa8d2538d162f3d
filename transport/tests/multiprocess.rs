//! The simulated host across processes: the `xenring-sim` daemon and
//! launcher, two domain processes sharing, mapping and ping-ponging 10,000
//! events, a domain process killed with SIGKILL, and a created domain that
//! outlives a killed process and takes a new one.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use xenring::sim::selftest::Offer;
use xenring::sim::{HostConfig, HostReport, SimAdmin, SimHost};

const SIM: &str = env!("CARGO_BIN_EXE_xenring-sim");

fn sim(socket: &Path) -> Command {
    let mut c = Command::new(SIM);
    c.arg("--socket").arg(socket);
    c
}

fn domain(socket: &Path, domid: u16, role: &[&str]) -> Child {
    sim(socket)
        .args(["exec", "--domid", &domid.to_string(), "--", SIM, "domain"])
        .args(role)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn a domain process")
}

/// Reads the sharer's offer line; the returned reader keeps its stdout open.
fn read_offer(child: &mut Child) -> (Offer, String, BufReader<std::process::ChildStdout>) {
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let offer = line
        .parse()
        .unwrap_or_else(|e| panic!("bad offer {line:?}: {e}"));
    (offer, line.trim().to_string(), out)
}

fn finish(child: Child, what: &str) -> Output {
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Polls the report until no domain is left (disconnects are processed on
/// the host's threads), then returns it.
fn settled(report: impl Fn() -> HostReport) -> HostReport {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = report();
        if r.domains.is_empty() || Instant::now() > deadline {
            return r;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn two_domain_processes_share_map_and_ping_pong_ten_thousand_events() {
    let dir = tempfile::tempdir().unwrap();
    let host = SimHost::start(dir.path().join("control.sock"), HostConfig::default()).unwrap();
    let socket = host.control_path().to_path_buf();
    let mut sharer = domain(
        &socket,
        1,
        &["sharer", "--peer=0", "--pages=2", "--rounds=10000"],
    );
    let (offer, line, _out) = read_offer(&mut sharer);
    assert_eq!((offer.domid, offer.refs.len()), (1, 2));
    // While both live, the host sees domain 1's grants.
    let mapper = domain(
        &socket,
        0,
        &["mapper", &format!("--offer={line}"), "--rounds=10000"],
    );
    let out0 = finish(mapper, "domain 0 (mapper)");
    let stdout = String::from_utf8_lossy(&out0.stdout);
    assert!(stdout.contains("rounds=10000"), "{stdout}");
    finish(sharer, "domain 1 (sharer)");
    let report = settled(|| host.report());
    assert!(report.domains.is_empty(), "domains left: {report}");
    report.assert_clean();
}

#[test]
fn a_killed_domain_is_cleaned_up_and_its_peer_notified() {
    let dir = tempfile::tempdir().unwrap();
    let host = SimHost::start(dir.path().join("control.sock"), HostConfig::default()).unwrap();
    let socket = host.control_path().to_path_buf();
    let mut sharer = domain(
        &socket,
        1,
        &["sharer", "--peer=0", "--pages=1", "--rounds=0", "--linger"],
    );
    let (_, line, _out) = read_offer(&mut sharer);
    let outlive = domain(&socket, 0, &["outlive", &format!("--offer={line}")]);
    // Wait until domain 0 has mapped domain 1's page.
    let deadline = Instant::now() + Duration::from_secs(10);
    while host
        .report()
        .domain(1)
        .is_none_or(|d| d.grants_mapped_by_peers == 0)
    {
        assert!(
            Instant::now() < deadline,
            "domain 0 never mapped: {}",
            host.report()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let before = host.report();
    assert_eq!(before.domain(1).unwrap().ports, 1);
    sharer.kill().unwrap(); // SIGKILL
    sharer.wait().unwrap();
    let out = finish(outlive, "domain 0 (outlives its peer)");
    assert!(String::from_utf8_lossy(&out.stdout).contains("notified: domain 1 is gone"));
    let report = settled(|| host.report());
    assert!(report.domains.is_empty(), "domains left: {report}");
    report.assert_clean();
}

#[test]
fn the_daemon_serves_exec_smoke_report_and_destroy() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock");
    let mut daemon = sim(&socket)
        .arg("run")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut daemon_out = BufReader::new(daemon.stdout.take().unwrap());
    daemon_out.read_line(&mut line).unwrap();
    assert!(line.contains("listening on"), "{line}");

    let out = sim(&socket)
        .args([
            "exec",
            "--domid",
            "7",
            "--",
            "sh",
            "-c",
            "echo $XENRING_DOMID $XENRING_SIM_SOCKET",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("7 {}", socket.display())
    );

    let out = sim(&socket)
        .args(["smoke", "--rounds=1000"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("running daemon")
            && text.contains("1000 event round trips")
            && text.ends_with("OK\n"),
        "{text}"
    );

    // A domain that holds something shows in `report --check`.
    let mut sharer = domain(
        &socket,
        3,
        &["sharer", "--peer=0", "--pages=1", "--rounds=0", "--linger"],
    );
    let _offer = read_offer(&mut sharer);
    let out = sim(&socket).args(["report", "--check"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("domain 3 (Running, 1 session): 1 frames owned, 1 grants valid"));
    // Destroying it ends its process's connection; the host is clean again.
    assert!(sim(&socket)
        .args(["destroy", "--domid", "3"])
        .status()
        .unwrap()
        .success());
    let admin = SimAdmin::connect(&socket).unwrap();
    let report = settled(|| admin.report().unwrap());
    report.assert_clean();
    sharer.kill().unwrap();
    sharer.wait().unwrap();

    rustix::process::kill_process(
        rustix::process::Pid::from_raw(daemon.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    assert!(daemon.wait().unwrap().success());
    assert!(!socket.exists(), "the daemon removes its socket");
}

/// Polls the report until `done` holds (within 10 s), then returns it.
fn wait_for(host: &SimHost, done: impl Fn(&HostReport) -> bool) -> HostReport {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = host.report();
        if done(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "not reached: {r}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The toolstack case (issue 5): `xenring-sim create` makes domain 5; a
/// process in it is SIGKILLed while a peer maps its page (the peer hears of
/// it through the unmap notification); domain 5 lives on, idle and clean;
/// a second process joins it and works; `destroy` ends it.
#[test]
fn a_created_domain_outlives_a_killed_process_and_takes_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let host = SimHost::start(dir.path().join("control.sock"), HostConfig::default()).unwrap();
    let socket = host.control_path().to_path_buf();
    let out = sim(&socket)
        .args(["create", "--domid", "5"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The domain's XenStore socket exists at once, before any process.
    assert!(host.xenstore_path(5).unwrap().exists());
    let again = sim(&socket)
        .args(["create", "--domid", "5"])
        .output()
        .unwrap();
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("domain 5 already exists"), "{err}");

    let mut first = domain(
        &socket,
        5,
        &["sharer", "--peer=0", "--pages=1", "--rounds=0", "--linger"],
    );
    let (_, line, _out) = read_offer(&mut first);
    let outlive = domain(&socket, 0, &["outlive", &format!("--offer={line}")]);
    wait_for(&host, |r| {
        r.domain(5).is_some_and(|d| d.grants_mapped_by_peers == 1)
    });
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let out = finish(outlive, "domain 0 (outlives the process)");
    assert!(String::from_utf8_lossy(&out.stdout).contains("notified: domain 5 is gone"));
    let r = wait_for(&host, |r| {
        r.domain(0).is_none() && r.domain(5).is_some_and(|d| d.sessions == 0)
    });
    let d5 = r.domain(5).unwrap();
    assert!(d5.persistent && d5.state == xenring::sim::DomainState::Running);
    r.assert_clean();

    let out = sim(&socket).arg("domains").output().unwrap();
    assert!(out.status.success());
    let table: Vec<Vec<String>> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect();
    assert_eq!(
        table,
        [
            ["DOMID", "STATE", "KIND", "SESSIONS"],
            ["5", "running", "persistent", "0"]
        ]
    );
    let out = sim(&socket).args(["domains", "--json"]).output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim_end(),
        r#"[{"domid":5,"state":"running","persistent":true,"sessions":0,"frames_owned":0,"grants_valid":0,"grants_mapped_by_peers":0,"mappings":0,"mapped_pages":0,"ports":0,"notifies":0,"clean":true}]"#
    );
    let out = sim(&socket)
        .args(["report", "--json", "--check"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.starts_with(r#"{"free_frames":"#)
            && report.contains(r#""orphan_frames":0,"domains":[{"domid":5,"#)
            && report.trim_end().ends_with(r#""xenstore":[],"leaks":[]}"#),
        "{report}"
    );

    // A restarted process joins domain 5 and works with its peer.
    let mut second = domain(
        &socket,
        5,
        &["sharer", "--peer=0", "--pages=2", "--rounds=1000"],
    );
    let (offer, line, _out) = read_offer(&mut second);
    assert_eq!(offer.domid, 5);
    let mapper = domain(
        &socket,
        0,
        &["mapper", &format!("--offer={line}"), "--rounds=1000"],
    );
    let out = finish(mapper, "domain 0 (mapper)");
    assert!(String::from_utf8_lossy(&out.stdout).contains("rounds=1000"));
    finish(second, "domain 5 (second process)");
    // The host sees the process's connection close a moment after it exits.
    let r = wait_for(&host, |r| {
        r.domains.len() == 1 && r.domain(5).is_some_and(|d| d.sessions == 0)
    });
    assert_eq!(r.domain(5).unwrap().sessions, 0);
    r.assert_clean();

    assert!(sim(&socket)
        .args(["destroy", "--domid", "5"])
        .status()
        .unwrap()
        .success());
    let report = settled(|| host.report());
    assert!(report.domains.is_empty(), "domains left: {report}");
    report.assert_clean();
}

#[test]
fn exec_without_a_host_says_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nothing.sock");
    let out = sim(&socket)
        .args(["exec", "--domid", "1", "--", "true"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no simulated host at") && err.contains("is the sim host running?"),
        "{err}"
    );
}

/// The async ring across two domain processes: the frontend pipelines
/// 1,000,000 echo requests and checks every answer's content; the host is
/// clean afterwards.
#[test]
fn a_million_requests_through_an_async_ring_between_two_processes() {
    let dir = tempfile::tempdir().unwrap();
    let host = SimHost::start(dir.path().join("control.sock"), HostConfig::default()).unwrap();
    let socket = host.control_path().to_path_buf();
    let start = Instant::now();
    let mut front = domain(
        &socket,
        1,
        &["ring-front", "--peer=0", "--pages=4", "--requests=1000000"],
    );
    let (_, line, out) = read_offer(&mut front);
    let back = domain(&socket, 0, &["ring-back", &format!("--offer={line}")]);
    let rest: Vec<String> = out.lines().map_while(|l| l.ok()).collect();
    let front_status = front.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(front.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(front_status.success(), "ring front failed: {err}");
    let out_back = finish(back, "domain 0 (ring back)");
    let text = rest.join("\n");
    assert!(text.contains("ring front requests=1000000"), "{text}");
    assert!(
        String::from_utf8_lossy(&out_back.stdout).contains("ring back answered=1000000"),
        "{}",
        String::from_utf8_lossy(&out_back.stdout)
    );
    eprintln!("1,000,000 requests in {:?}: {text}", start.elapsed());
    let report = settled(|| host.report());
    assert!(report.domains.is_empty(), "domains left: {report}");
    report.assert_clean();
}

/// Peer death across processes: the backend process is killed (SIGKILL)
/// while the frontend pipelines requests; the frontend process exits within
/// a few seconds with an error naming the dead peer (not a hang, not a
/// panic), and the host is clean afterwards.
#[test]
fn a_killed_ring_backend_process_fails_the_frontend_process_with_peer_death() {
    let dir = tempfile::tempdir().unwrap();
    let host = SimHost::start(dir.path().join("control.sock"), HostConfig::default()).unwrap();
    let socket = host.control_path().to_path_buf();
    // No --requests: the frontend calls until the ring fails.
    let mut front = domain(&socket, 1, &["ring-front", "--peer=0", "--pages=1"]);
    let (_, line, mut out) = read_offer(&mut front);
    let mut back = domain(&socket, 0, &["ring-back", &format!("--offer={line}")]);
    // Mid-stream: wait until answers flow.
    let mut flowing = String::new();
    out.read_line(&mut flowing).unwrap();
    assert_eq!(flowing.trim(), "ring front flowing", "{flowing:?}");
    back.kill().unwrap(); // SIGKILL
    back.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(s) = front.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            front.kill().unwrap();
            front.wait().unwrap();
            panic!("the ring front hung after its backend was killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(front.stderr.as_mut().unwrap(), &mut err).unwrap();
    // An error exit (1), not a signal or a panic (101).
    assert_eq!(status.code(), Some(1), "{status}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        err.contains("ring front after") && err.contains("ring peer domain 0 is gone"),
        "{err}"
    );
    eprintln!("the ring front's exit: {}", err.trim());
    let report = settled(|| host.report());
    assert!(report.domains.is_empty(), "domains left: {report}");
    report.assert_clean();
}

#[test]
fn a_second_host_on_the_same_socket_is_refused_naming_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock");
    let mut first = sim(&socket)
        .arg("run")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(first.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("listening on"), "{line}");
    // Before: the second host replaced the socket and the first one's
    // domains were cut off from it.
    let mut second = sim(&socket)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let status = loop {
        if let Some(st) = second.try_wait().unwrap() {
            break st;
        }
        if t.elapsed() > Duration::from_secs(20) {
            let _ = second.kill();
            let _ = second.wait();
            let _ = first.kill();
            panic!("a second host started on the same socket and kept running");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "a second host started: {err}");
    assert!(
        err.contains(&format!("already served by pid {}", first.id())),
        "{err}"
    );
    // The first host still answers on its socket.
    let out = sim(&socket).arg("domains").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid = rustix::process::Pid::from_raw(first.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    first.wait().unwrap();
    // A killed host's lock goes with it: a new host starts.
    let mut third = sim(&socket)
        .arg("run")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(third.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("listening on"), "{line}");
    third.kill().unwrap();
    third.wait().unwrap();
}

/// No host at the socket: one line that names the socket and the OS error
/// once (the I/O error used to be printed twice: in the message and again
/// as its source).
#[test]
fn no_host_is_said_once() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nothing.sock");
    let out = sim(&socket).arg("domains").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(&socket.display().to_string()), "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
}
