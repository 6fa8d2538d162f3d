//! A vchan stream across two domain processes on the simulated host: 1 GiB
//! from server to client through a 1 MiB ring, set up through libxenvchan's
//! XenStore handshake, every byte checked on arrival, and nothing left on
//! the host at the end.
//!
//! The domain processes are this test binary again, launched through
//! `xenring-sim exec` (which sets `XENRING_SIM_SOCKET`, `XENRING_DOMID` and
//! `XENSTORED_PATH`) and told their part by `XENRING_VCHAN_ROLE`; the
//! `domain_role` test does nothing when that variable is unset.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xenring::sim::{HostConfig, HostReport, SimDomain, SimHost};
use xenring::stream::{connect, VchanAddress, VchanServer};
use xenring::xenstore::XsClient;

const SIM: &str = env!("CARGO_BIN_EXE_xenring-sim");
const ROLE: &str = "XENRING_VCHAN_ROLE";
const TOTAL: u64 = 1 << 30;
const CHUNK: usize = 64 << 10;
const SERVER: u16 = 1;
const CLIENT: u16 = 2;
const ADDR: VchanAddress = VchanAddress {
    server: SERVER,
    client: CLIENT,
    port: 5000,
};

/// Fills `buf` with little-endian u64 counters starting at word `first`.
fn fill(buf: &mut [u8], first: u64) {
    for (i, w) in buf.chunks_exact_mut(8).enumerate() {
        w.copy_from_slice(&(first + i as u64).to_le_bytes());
    }
}

/// Checks `buf` holds the counters from word `first`; returns the first bad
/// word's index.
fn check(buf: &[u8], first: u64) -> Option<usize> {
    buf.chunks_exact(8)
        .enumerate()
        .position(|(i, w)| u64::from_le_bytes(w.try_into().unwrap()) != first + i as u64)
}

async fn server() {
    let dom = SimDomain::from_env().unwrap();
    let xs = XsClient::connect(std::env::var_os("XENSTORED_PATH").unwrap())
        .await
        .unwrap();
    // Left (client to server) one page; right (server to client) 1 MiB.
    let listener = VchanServer::listen(&dom, &xs, ADDR, 12, 20).await.unwrap();
    let mut s = listener.accept(&xs).await.unwrap();
    let mut buf = vec![0u8; CHUNK];
    let mut word = 0u64;
    let mut sent = 0u64;
    while sent < TOTAL {
        fill(&mut buf, word);
        s.write_all(&buf).await.unwrap();
        sent += CHUNK as u64;
        word += (CHUNK / 8) as u64;
    }
    // Wait for the client's verdict byte, then close.
    let mut verdict = [0u8; 1];
    s.read_exact(&mut verdict).await.unwrap();
    assert_eq!(&verdict, b"k", "the client found bad data");
    s.shutdown().await.unwrap();
    let st = s.stats();
    println!(
        "server sent={sent} events_sent={} events_received={}",
        st.events_sent, st.events_received
    );
}

async fn client() {
    let dom = SimDomain::from_env().unwrap();
    let xs = XsClient::connect(std::env::var_os("XENSTORED_PATH").unwrap())
        .await
        .unwrap();
    let mut s = connect(&dom, &xs, ADDR).await.unwrap();
    let mut buf = vec![0u8; CHUNK];
    let mut word = 0u64;
    let mut got = 0u64;
    let t = Instant::now();
    while got < TOTAL {
        s.read_exact(&mut buf).await.unwrap();
        if let Some(bad) = check(&buf, word) {
            panic!("bad data at byte {}", got + bad as u64 * 8);
        }
        got += CHUNK as u64;
        word += (CHUNK / 8) as u64;
    }
    let elapsed = t.elapsed();
    s.write_all(b"k").await.unwrap();
    // The server closes after the verdict: the end of the stream.
    assert_eq!(s.read(&mut buf).await.unwrap(), 0);
    let st = s.stats();
    println!(
        "client got={got} in {:.2}s ({:.0} MB/s) events_sent={} events_received={}",
        elapsed.as_secs_f64(),
        got as f64 / elapsed.as_secs_f64() / 1e6,
        st.events_sent,
        st.events_received
    );
}

/// Runs the part `XENRING_VCHAN_ROLE` names, inside a domain process.
#[test]
fn domain_role() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    match role.as_str() {
        "server" => rt.block_on(server()),
        "client" => rt.block_on(client()),
        other => panic!("unknown role {other:?}"),
    }
}

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
fn one_gib_through_a_stream_between_two_domain_processes() {
    if std::env::var_os(ROLE).is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let host = SimHost::start(dir.path().join("control.sock"), HostConfig::default()).unwrap();
    let me = std::env::current_exe().unwrap();
    let spawn = |domid: u16, role: &str| {
        Command::new(SIM)
            .arg("--socket")
            .arg(host.control_path())
            .args(["exec", "--domid", &domid.to_string(), "--"])
            .arg(&me)
            .args(["--exact", "domain_role", "--nocapture", "--test-threads=1"])
            .env(ROLE, role)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let t = Instant::now();
    let server = spawn(SERVER, "server");
    let client = spawn(CLIENT, "client");
    for (child, what) in [(client, "client"), (server, "server")] {
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{what} failed ({}):\n{text}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        for line in text
            .lines()
            .filter(|l| l.contains("got=") || l.contains("sent="))
        {
            eprintln!("{line}");
        }
    }
    eprintln!("1 GiB test took {:.2}s", t.elapsed().as_secs_f64());
    settled(|| host.report()).assert_clean();
}
