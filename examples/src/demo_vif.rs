//! The network part of the demo, and what the vif tests and benchmark
//! share: network namespaces made and removed on demand ([`NetNs`]), a
//! vif device between a backend daemon in one namespace and a frontend
//! daemon in another ([`start_vif`]), ping ([`ping`]) and a checksummed
//! TCP source and sink ([`tcp_tool_main`], run as the `xenring-tcp`
//! program inside a namespace).
//!
//! ```text
//!   netns <be>: backend daemon (dom0)       netns <fe>: frontend daemon (dom1)
//!     TAP vif1.0  10.77.0.1/24  <== netif rings ==>  TAP xnet0  10.77.0.2/24
//! ```
//!
//! Everything here needs root (namespaces, TAP devices) and `ip`
//! (iproute2); [`ping`] needs `ping` (iputils-ping), the demo's own
//! [`icmp_ping`] does not.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use xenring::xenbus::DeviceId;

use crate::ping::icmp_ping;
use crate::system::{Daemon, System};

/// The backend end's address.
pub const BACKEND_ADDR: &str = "10.77.0.1";
/// The frontend end's address.
pub const FRONTEND_ADDR: &str = "10.77.0.2";
/// [`BACKEND_ADDR`] as an address.
pub const BACKEND_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// [`FRONTEND_ADDR`] as an address.
pub const FRONTEND_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

/// Fails with a message naming `tool` if it is not on `PATH`.
pub fn need_tool(tool: &str, package: &str) -> anyhow::Result<()> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    if !found {
        bail!("{tool} is not installed (Debian package {package}); the vif tests need it");
    }
    Ok(())
}

/// A network namespace made for one test or demo, deleted when dropped.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

fn run_checked(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl NetNs {
    /// Creates a namespace with a unique name starting with `prefix`, its
    /// loopback up.
    pub fn create(prefix: &str) -> anyhow::Result<NetNs> {
        static N: AtomicU32 = AtomicU32::new(0);
        need_tool("ip", "iproute2")?;
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        run_checked(Command::new("ip").args(["netns", "add", &name]))
            .context("creating a network namespace (needs root)")?;
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `program args` to run inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs `program args` inside the namespace; its stdout, or an error
    /// with its stderr.
    pub fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        run_checked(self.command(program).args(args))
    }

    /// `ip -n <ns> args`.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<()> {
        run_checked(Command::new("ip").args(["-n", &self.name]).args(args)).map(|_| ())
    }

    /// Waits until link `dev` exists in the namespace.
    pub async fn wait_link(&self, dev: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.ip(&["link", "show", "dev", dev]).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("no link {dev} in namespace {} after {timeout:?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Adds `addr` (with its prefix) to `dev` and sets it up.
    pub fn addr(&self, dev: &str, addr: &str) -> anyhow::Result<()> {
        self.ip(&["addr", "replace", addr, "dev", dev])?;
        self.ip(&["link", "set", dev, "up"])
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// What one ping run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PingStats {
    /// Echo requests sent.
    pub sent: u32,
    /// Replies received.
    pub received: u32,
    /// Average round trip, in milliseconds.
    pub avg_ms: f64,
}

/// Pings `addr` from inside `ns`: `count` echoes `interval_s` apart, each
/// waited for at most 2 s. An error if none came back.
pub fn ping(ns: &NetNs, addr: &str, count: u32, interval_s: f64) -> anyhow::Result<PingStats> {
    need_tool("ping", "iputils-ping")?;
    let out = ns
        .command("ping")
        .args(["-n", "-q", "-c", &count.to_string(), "-W", "2"])
        .args(["-i", &format!("{interval_s}"), addr])
        .stdin(Stdio::null())
        .output()
        .context("running ping")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    parse_ping(&text).ok_or_else(|| {
        anyhow!(
            "ping {addr} in {}: {} (stdout: {text:?}, stderr: {:?})",
            ns.name(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Reads iputils ping's summary: "N packets transmitted, M received" and
/// "rtt min/avg/max/mdev = a/b/c/d ms". `None` unless some replies came.
pub fn parse_ping(text: &str) -> Option<PingStats> {
    let line = text.lines().find(|l| l.contains("packets transmitted"))?;
    let mut nums = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u32>().ok());
    let sent = nums.next()??;
    let received = nums.next()??;
    let rtt = text.lines().find(|l| l.contains("min/avg/max"))?;
    let avg_ms = rtt
        .split('=')
        .nth(1)?
        .trim()
        .split('/')
        .nth(1)?
        .parse()
        .ok()?;
    (received > 0).then_some(PingStats {
        sent,
        received,
        avg_ms,
    })
}

/// A vif device running between two namespaces.
#[derive(Debug)]
pub struct VifPair {
    /// The device.
    pub id: DeviceId,
    /// The backend daemon.
    pub backend: Daemon,
    /// The frontend daemon.
    pub frontend: Daemon,
    /// The backend's TAP name.
    pub backend_tap: String,
    /// The frontend's TAP name.
    pub frontend_tap: String,
    /// The frontend's namespace (dropped after the daemons).
    pub frontend_ns: NetNs,
    /// The backend's namespace.
    pub backend_ns: NetNs,
}

impl VifPair {
    /// Both daemons' logs, for error messages.
    pub fn logs(&self) -> String {
        format!(
            "backend log:\n{}\nfrontend log:\n{}",
            self.backend.log(),
            self.frontend.log()
        )
    }

    /// Addresses the backend's TAP again (after a backend restart made it
    /// anew, as a hotplug script would).
    pub async fn address_backend(&self) -> anyhow::Result<()> {
        self.backend_ns
            .wait_link(&self.backend_tap, Duration::from_secs(30))
            .await?;
        self.backend_ns
            .addr(&self.backend_tap, &format!("{BACKEND_ADDR}/24"))
    }

    /// Kills the backend daemon (SIGKILL) and waits for it to be gone.
    pub async fn kill_backend(&mut self) -> anyhow::Result<()> {
        self.backend.signal(rustix::process::Signal::KILL)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.backend.running() {
            if Instant::now() > deadline {
                bail!("the killed backend daemon is still running");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Starts a new backend daemon in the backend's namespace (after the
    /// old one died).
    pub fn respawn_backend(&mut self, sys: &System) -> anyhow::Result<()> {
        self.backend = sys.spawn_backend_in(self.backend_ns.name(), 0, &["--devices", "vif"])?;
        Ok(())
    }

    /// Bytes the backend's TAP device has received from the frontend.
    pub fn backend_rx_bytes(&self) -> anyhow::Result<u64> {
        let path = format!("/sys/class/net/{}/statistics/rx_bytes", self.backend_tap);
        Ok(self.backend_ns.run("cat", &[&path])?.trim().parse()?)
    }
}

/// Creates two namespaces, a backend daemon (dom0) in one and a frontend
/// daemon (domain `fe`, created here) in the other, and vif device 0 with
/// `mtu` and `rx_mode` (`transfer`, `copy`, or the frontend's choice);
/// waits until it is connected and both TAP devices (`vif<fe>.0` and
/// `xnet0`) are addressed.
pub async fn start_vif(
    sys: &System,
    fe: u16,
    mtu: u16,
    rx_mode: Option<&str>,
) -> anyhow::Result<VifPair> {
    let backend_ns = NetNs::create("xrbe")?;
    let frontend_ns = NetNs::create("xrfe")?;
    sys.create_domain(fe)?;
    let backend = sys.spawn_backend_in(backend_ns.name(), 0, &["--devices", "vif"])?;
    let frontend = sys.spawn_frontend_in(frontend_ns.name(), fe, &["--devices", "vif"])?;
    let be_tap = format!("vif{fe}.0");
    let mtu_s = mtu.to_string();
    let mut fe_params = vec![("mtu", mtu_s.as_str()), ("tap", "xnet0")];
    if let Some(m) = rx_mode {
        fe_params.push(("rx-mode", m));
    }
    let id = sys
        .add_vif(fe, 0, &[("mtu", &mtu_s), ("tap", &be_tap)], &fe_params)
        .await?;
    let pair = VifPair {
        id,
        backend,
        frontend,
        backend_tap: be_tap.clone(),
        frontend_tap: "xnet0".into(),
        frontend_ns,
        backend_ns,
    };
    sys.wait_connected(&pair.id, Duration::from_secs(30))
        .await
        .map_err(|e| anyhow!("{e}\n{}", pair.logs()))?;
    pair.address_backend().await?;
    pair.frontend_ns
        .wait_link(&pair.frontend_tap, Duration::from_secs(30))
        .await?;
    pair.frontend_ns
        .addr(&pair.frontend_tap, &format!("{FRONTEND_ADDR}/24"))?;
    Ok(pair)
}

// ----------------------------------------------------------- TCP tool

/// A checksum of a byte stream that does not depend on how the stream was
/// cut into reads: 64-bit words mixed in order, the tail and the length
/// last.
#[derive(Debug, Default, Clone)]
pub struct StreamSum {
    h: u64,
    pend: [u8; 8],
    n: usize,
    total: u64,
}

impl StreamSum {
    fn mix(&mut self, w: u64) {
        self.h = (self.h ^ w)
            .wrapping_mul(0x0000_0100_0000_01b3)
            .rotate_left(29);
    }

    /// Adds bytes.
    pub fn update(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        while self.n != 0 && !data.is_empty() {
            self.pend[self.n] = data[0];
            self.n += 1;
            data = &data[1..];
            if self.n == 8 {
                self.mix(u64::from_le_bytes(self.pend));
                self.n = 0;
            }
        }
        let mut words = data.chunks_exact(8);
        for w in &mut words {
            self.mix(u64::from_le_bytes(w.try_into().expect("8 bytes")));
        }
        for &b in words.remainder() {
            self.pend[self.n] = b;
            self.n += 1;
        }
    }

    /// Bytes so far.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The checksum.
    pub fn finish(&self) -> u64 {
        let mut s = self.clone();
        let mut tail = [0u8; 8];
        tail[..s.n].copy_from_slice(&s.pend[..s.n]);
        s.mix(u64::from_le_bytes(tail));
        s.mix(s.total);
        s.h
    }
}

/// `xenring-tcp sink ADDR:PORT` (accept one connection, read it to the
/// end) or `xenring-tcp source ADDR:PORT BYTES` (connect, retrying for
/// 20 s, and send BYTES of a pseudo-random stream). Both print
/// `bytes N checksum HEX SECONDS` when done.
pub fn tcp_tool_main(args: Vec<String>) -> ExitCode {
    match tcp_tool(&args) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xenring-tcp: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn tcp_tool(args: &[String]) -> anyhow::Result<String> {
    let usage = "usage: xenring-tcp sink ADDR:PORT | source ADDR:PORT BYTES";
    let role = args.get(1).ok_or_else(|| anyhow!("{usage}"))?;
    let addr: SocketAddr = args
        .get(2)
        .ok_or_else(|| anyhow!("{usage}"))?
        .parse()
        .context("ADDR:PORT")?;
    let mut sum = StreamSum::default();
    let mut buf = vec![0u8; 256 << 10];
    let start = Instant::now();
    match role.as_str() {
        "sink" => {
            let l = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
            println!("listening");
            std::io::stdout().flush()?;
            let (mut s, _) = l.accept()?;
            loop {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                sum.update(&buf[..n]);
            }
        }
        "source" => {
            let bytes: u64 = args
                .get(3)
                .ok_or_else(|| anyhow!("{usage}"))?
                .parse()
                .context("BYTES")?;
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut s = loop {
                match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                    Ok(s) => break s,
                    Err(e) if Instant::now() > deadline => {
                        return Err(e).with_context(|| format!("connecting to {addr}"))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            };
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
            let mut left = bytes;
            while left > 0 {
                let n = (left.min(buf.len() as u64)) as usize;
                for w in buf[..n].chunks_mut(8) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    w.copy_from_slice(&x.to_le_bytes()[..w.len()]);
                }
                s.write_all(&buf[..n])?;
                sum.update(&buf[..n]);
                left -= n as u64;
            }
            s.shutdown(std::net::Shutdown::Write)?;
            // Wait for the sink to close: everything was read.
            let _ = s.read(&mut buf);
        }
        other => bail!("unknown role {other:?}; {usage}"),
    }
    Ok(format!(
        "bytes {} checksum {:016x} {:.3}",
        sum.total(),
        sum.finish(),
        start.elapsed().as_secs_f64()
    ))
}

/// A finished TCP transfer as the tool printed it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TcpResult {
    /// Bytes.
    pub bytes: u64,
    /// Checksum.
    pub checksum: u64,
    /// Seconds.
    pub secs: f64,
}

/// Reads `bytes N checksum HEX SECONDS` from the tool's output.
pub fn parse_tcp(out: &str) -> anyhow::Result<TcpResult> {
    let line = out
        .lines()
        .find(|l| l.starts_with("bytes "))
        .ok_or_else(|| anyhow!("no result line in {out:?}"))?;
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() != 5 {
        bail!("bad result line {line:?}");
    }
    Ok(TcpResult {
        bytes: f[1].parse()?,
        checksum: u64::from_str_radix(f[3], 16)?,
        secs: f[4].parse()?,
    })
}

/// Sends `bytes` by TCP from the frontend's namespace to a sink in the
/// backend's (`tool` is the `xenring-tcp` program); both ends' results.
pub fn tcp_transfer(
    tool: &std::path::Path,
    pair: &VifPair,
    port: u16,
    bytes: u64,
) -> anyhow::Result<(TcpResult, TcpResult)> {
    tcp_between(
        tool,
        pair.backend_ns.name(),
        pair.frontend_ns.name(),
        BACKEND_ADDR,
        port,
        bytes,
    )
}

fn in_ns(ns: &str, program: &std::path::Path) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(program);
    c
}

/// Sends `bytes` by TCP from a source in namespace `from` to a sink at
/// `addr:port` in namespace `to`; (source, sink) results.
pub fn tcp_between(
    tool: &std::path::Path,
    to: &str,
    from: &str,
    addr: &str,
    port: u16,
    bytes: u64,
) -> anyhow::Result<(TcpResult, TcpResult)> {
    let mut sink = in_ns(to, tool)
        .args(["sink", &format!("{addr}:{port}")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the TCP sink")?;
    // Wait for "listening".
    let mut out = sink.stdout.take().expect("piped");
    let mut first = [0u8; 10];
    out.read_exact(&mut first)
        .context("the sink did not start")?;
    let source = in_ns(from, tool)
        .args(["source", &format!("{addr}:{port}"), &bytes.to_string()])
        .stdin(Stdio::null())
        .output()
        .context("running the TCP source")?;
    let mut rest = String::new();
    let _ = out.read_to_string(&mut rest);
    let st = sink.wait()?;
    let mut err = String::new();
    if let Some(mut e) = sink.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    if !source.status.success() || !st.success() {
        bail!(
            "TCP transfer failed: source {} {:?}, sink {st} {err:?}",
            source.status,
            String::from_utf8_lossy(&source.stderr)
        );
    }
    Ok((
        parse_tcp(&String::from_utf8_lossy(&source.stdout))?,
        parse_tcp(&rest)?,
    ))
}

// --------------------------------------------------------------- demo

/// What the demo's network part measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VifDemoSummary {
    /// Pings from the frontend's namespace to the backend's.
    pub to_backend: PingStats,
    /// Pings the other way.
    pub to_frontend: PingStats,
    /// Setup time (namespaces, daemons, device connected, addressed).
    pub setup: Duration,
}

/// The demo's network part: two namespaces, a vif device between a
/// backend daemon in one and a frontend daemon in the other (transfer
/// mode), pings both ways with [`icmp_ping`]. Returns the lines to print,
/// and the figures; without root (or without `ip`), a line saying why and no figures
/// instead of failing.
pub async fn run_vif_demo(sys: &System) -> anyhow::Result<(Vec<String>, Option<VifDemoSummary>)> {
    let skipped = |why: String| Ok((vec![format!("  net: skipped: {why}")], None));
    if !rustix::process::geteuid().is_root() {
        let exe = std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "target/release/xenring-demo".into());
        return skipped(format!(
            "the vif device needs root (it creates network namespaces and TAP devices); \
             to see it, run the demo as root: sudo {exe}"
        ));
    }
    if let Err(e) = need_tool("ip", "iproute2") {
        return skipped(e.to_string());
    }
    let t0 = Instant::now();
    let fe = 2;
    let pair = match start_vif(sys, fe, 1500, None).await {
        Ok(p) => p,
        Err(e) => {
            return skipped(format!(
                "could not set up namespaces and the vif device: {e:#}"
            ));
        }
    };
    let setup = t0.elapsed();
    // The demo's own ping (no iputils-ping needed).
    let gap = Duration::from_millis(10);
    let to_backend = icmp_ping(&pair.frontend_ns, BACKEND_IP, 20, gap)?;
    let to_frontend = icmp_ping(&pair.backend_ns, FRONTEND_IP, 20, gap)?;
    let log = pair.frontend.log();
    let mode = ["transfer", "copy"]
        .into_iter()
        .find(|m| log.contains(&format!("m{m}")) || log.contains(&format!("={m}")))
        .unwrap_or("?");
    let mut lines = vec![format!(
        "  net: vif device between netns {} (backend daemon, dom0, {BACKEND_ADDR}) and {} \
         (frontend daemon, domU {fe}, {FRONTEND_ADDR}), {} receive, set up in {:.0} ms",
        pair.backend_ns.name(),
        pair.frontend_ns.name(),
        mode,
        setup.as_secs_f64() * 1e3
    )];
    for (what, p) in [
        ("frontend -> backend", to_backend),
        ("backend -> frontend", to_frontend),
    ] {
        lines.push(format!(
            "  net: ping {what}: {}/{} replies, average {:.3} ms",
            p.received, p.sent, p.avg_ms
        ));
    }
    sys.remove(&pair.id, Duration::from_secs(10)).await?;
    let VifPair {
        backend, frontend, ..
    } = pair;
    frontend.terminate(Duration::from_secs(10))?;
    let st = backend.terminate(Duration::from_secs(10))?;
    if !st.success() {
        bail!("the vif backend daemon exited with {st}");
    }
    Ok((
        lines,
        Some(VifDemoSummary {
            to_backend,
            to_frontend,
            setup,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_output_is_read() {
        let out = "PING 10.77.0.1 (10.77.0.1) 56(84) bytes of data.\n\n--- 10.77.0.1 ping statistics ---\n\
                   5 packets transmitted, 4 received, 20% packet loss, time 41ms\n\
                   rtt min/avg/max/mdev = 0.051/0.083/0.120/0.020 ms\n";
        assert_eq!(
            parse_ping(out),
            Some(PingStats {
                sent: 5,
                received: 4,
                avg_ms: 0.083
            })
        );
        assert_eq!(
            parse_ping("3 packets transmitted, 0 received, 100% packet loss"),
            None
        );
    }

    #[test]
    fn the_stream_sum_does_not_depend_on_the_cuts() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        let mut a = StreamSum::default();
        a.update(&data);
        let mut b = StreamSum::default();
        for c in data.chunks(13) {
            b.update(c);
        }
        assert_eq!(a.finish(), b.finish());
        assert_eq!(a.total(), 1000);
        let mut c = StreamSum::default();
        c.update(&data[..999]);
        assert_ne!(a.finish(), c.finish());
    }
}
