//! 100,000 packets into the frontend through transfer mode (a flood ping
//! from the backend's namespace: every echo request is one page
//! transferred into one of the receive pool's slots), then the receive
//! pool's counts are back to their start (every slot armed, no page out,
//! no bad fill) and the simulated host reports nothing left behind.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use xenring::sim::HostConfig;
use xenring_examples::demo_vif::{need_tool, parse_ping, start_vif, FRONTEND_ADDR};
use xenring_examples::system::System;

const PACKETS: u64 = 100_000;

/// The number after `key` in the stats line.
fn field(out: &str, key: &str) -> u64 {
    let line = out.lines().find(|l| l.starts_with("vif ")).unwrap_or("");
    let rest = line
        .split(key)
        .nth(1)
        .unwrap_or_else(|| panic!("no {key:?} in {line:?}"));
    rest.split(|c: char| !c.is_ascii_digit())
        .find(|s| !s.is_empty())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no number after {key:?} in {line:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_packets_recycle_every_slot_and_page() -> anyhow::Result<()> {
    need_tool("ping", "iputils-ping")?;
    let dir = tempfile::tempdir()?;
    let node = PathBuf::from(env!("CARGO_BIN_EXE_xenring-node"));
    let sys = System::start(dir.path(), node, HostConfig::default()).await?;
    let pair = start_vif(&sys, 1, 1500, Some("transfer")).await?;
    let start = sys.report();
    let out = pair
        .backend_ns
        .command("ping")
        .args(["-n", "-q", "-f", "-l", "32", "-W", "10"])
        .args(["-c", &PACKETS.to_string(), FRONTEND_ADDR])
        .stdin(Stdio::null())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let p = parse_ping(&text)
        .ok_or_else(|| anyhow::anyhow!("flood ping failed: {text}\n{}", pair.logs()))?;
    assert_eq!(u64::from(p.sent), PACKETS, "{text}");
    assert_eq!(
        u64::from(p.received),
        PACKETS,
        "every echo came back: {text}"
    );
    // While running, the pool's pages are all back with the host: the
    // frontend owns what it owned before the flood (waiting out a stray
    // packet, e.g. IPv6 neighbour discovery, being delivered just now).
    let owned = |r: &xenring::sim::HostReport| r.domain(1).map(|d| d.frames_owned);
    let mut now = sys.report();
    for _ in 0..250 {
        if owned(&now) == owned(&start) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        now = sys.report();
    }
    assert_eq!(
        owned(&now),
        owned(&start),
        "the frontend holds no page it received"
    );

    sys.remove(&pair.id, Duration::from_secs(10)).await?;
    let (f, b) = (pair.frontend, pair.backend);
    assert!(f.terminate(Duration::from_secs(10))?.success());
    assert!(b.terminate(Duration::from_secs(10))?.success());
    let fe = std::fs::read_to_string(dir.path().join("frontend-dom1.out"))?;
    assert!(field(&fe, "to tap") >= PACKETS, "{fe}");
    assert!(field(&fe, "filled") >= PACKETS, "{fe}");
    assert_eq!(field(&fe, "pool slots"), 256, "{fe}");
    assert_eq!(field(&fe, "armed"), 256, "every slot armed again: {fe}");
    assert_eq!(field(&fe, "pages-out"), 0, "no page held: {fe}");
    assert_eq!(field(&fe, "bad-fills"), 0, "{fe}");
    assert_eq!(field(&fe, "bad frames"), 0, "{fe}");
    assert_eq!(field(&fe, "late pages"), 0, "{fe}");
    sys.wait_clean(Duration::from_secs(10)).await?;
    sys.shutdown();
    Ok(())
}
