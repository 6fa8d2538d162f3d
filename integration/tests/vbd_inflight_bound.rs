//! A frontend that keeps a 4-page ring full of 1 MiB reads (indirect
//! requests whose 256 segments all name one page, so it costs the
//! frontend nothing) cannot make the vbd backend daemon hold more than
//! its documented per-device bound of data in flight
//! (`xenring_backend::vbd::inflight::MAX_INFLIGHT_BYTES`). Before the
//! bound, every request on the ring was served at once, each with its
//! own 1 MiB buffer.

use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use xenring::abi::blkif::{
    BlkifRequest, BlkifRequestIndirect, BlkifResponse, BlkifSegment, BLKIF_OP_INDIRECT,
    BLKIF_OP_READ, BLKIF_RSP_OKAY,
};
use xenring::abi::xenbus::XenbusState;
use xenring::platform::{Access, Platform};
use xenring::ring::RingClient;
use xenring::sim::{HostConfig, SimDomain};
use xenring_backend::vbd::inflight::MAX_INFLIGHT_BYTES;
use xenring_examples::system::System;

type Req = BlkifRequest<[u8; 112]>;
type Rsp = BlkifResponse<[u8; 16]>;

/// 1 MiB: one request reads all of it.
const SECTORS: u64 = 2048;
const SEGMENTS: u16 = 256;
const REQUESTS: usize = 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_ring_of_large_reads_holds_at_most_the_bound() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let image = dir.path().join("disk.img");
    std::fs::write(&image, vec![0x5au8; (SECTORS * 512) as usize])?;
    let node = PathBuf::from(env!("CARGO_BIN_EXE_xenring-node"));
    let sys = System::start(dir.path(), node, HostConfig::default()).await?;
    sys.create_domain(1)?;
    let backend = sys.spawn_backend(0, &["--devices", "vbd"])?;
    let id = sys.add_vbd(1, 0, &image, false).await?;
    sys.wait_states(
        &id,
        XenbusState::InitWait,
        XenbusState::Initialising,
        Duration::from_secs(30),
    )
    .await?;

    // We are the frontend: a 4-page ring (128 slots), one data page and
    // one indirect page naming the data page 256 times.
    let dom = SimDomain::connect(sys.host().control_path(), 1)?;
    let (ring, ep) = RingClient::<Req, Rsp>::share(&dom, 0, 4)?;
    let data = dom.share_pages(0, 2, Access::ReadWrite)?;
    let (page, ind_page) = (data.refs()[0], data.refs()[1]);
    let mut ind = vec![0u8; 4096];
    for i in 0..usize::from(SEGMENTS) {
        BlkifSegment {
            gref: page,
            first_sect: 0,
            last_sect: 7,
        }
        .write_to_indirect_page(&mut ind, i)?;
    }
    data.memory().write(4096, &ind);
    let fe = id.frontend_dir();
    let mut keys = vec![
        ("ring-page-order".to_string(), "2".to_string()),
        ("event-channel".to_string(), ep.port.to_string()),
        ("protocol".to_string(), "x86_64-abi".to_string()),
        ("feature-persistent".to_string(), "1".to_string()),
    ];
    for (i, r) in ep.refs.iter().enumerate() {
        keys.push((format!("ring-ref{i}"), r.to_string()));
    }
    keys.push(("state".to_string(), "3".to_string()));
    for (k, v) in keys {
        sys.xs().write(&format!("{fe}/{k}"), &v).await?;
    }
    sys.wait_states(
        &id,
        XenbusState::Connected,
        XenbusState::Initialised,
        Duration::from_secs(30),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", backend.log()))?;

    let read = || {
        let mut r = BlkifRequestIndirect::new_unchecked([0u8; 112]);
        r.set_operation(BLKIF_OP_INDIRECT);
        r.set_indirect_op(BLKIF_OP_READ);
        r.set_nr_segments(SEGMENTS);
        r.set_sector_number(0);
        r.set_indirect_gref(0, ind_page).expect("one indirect page");
        Req::new_unchecked(r.into_inner())
    };
    // Keep the ring full: as many calls in flight as it has slots.
    let statuses: Vec<i16> = futures::stream::iter(0..REQUESTS)
        .map(|_| {
            let ring = ring.clone();
            let req = read();
            async move { ring.call(req).await.map(|r| r.status()) }
        })
        .buffer_unordered(128)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    assert!(
        statuses.iter().all(|s| *s == BLKIF_RSP_OKAY),
        "{:?}",
        statuses.iter().find(|s| **s != BLKIF_RSP_OKAY)
    );
    let mut got = vec![0u8; 4096];
    data.memory().read(0, &mut got);
    assert!(
        got.iter().all(|b| *b == 0x5a),
        "the page holds what was read"
    );

    // Close as a frontend does: ring, then state Closed (without the
    // state, a removal that comes before the backend saw the ring close
    // waits for the frontend to close, as it should).
    ring.close().await;
    sys.xs().write(&format!("{fe}/state"), "6").await?;
    sys.remove(&id, Duration::from_secs(10))
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", backend.log()))?;
    drop(data);
    let out = {
        let out_path = backend.log_path().with_extension("out");
        assert!(backend.terminate(Duration::from_secs(10))?.success());
        std::fs::read_to_string(out_path)?
    };
    // "vbd requests N ... inflight-peak N B"
    let peak: u64 = out
        .lines()
        .find(|l| l.starts_with("vbd "))
        .and_then(|l| l.split("inflight-peak ").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no inflight-peak in the backend's summary:\n{out}"));
    assert!(
        out.contains(&format!("requests {REQUESTS} errors 0")),
        "{out}"
    );
    assert!(peak >= 1 << 20, "a request held its MiB: {out}");
    assert!(
        peak <= MAX_INFLIGHT_BYTES as u64,
        "the backend held {peak} bytes of data in flight, over its bound of \
         {MAX_INFLIGHT_BYTES}: {out}"
    );
    drop(dom);
    sys.wait_clean(Duration::from_secs(10)).await?;
    sys.shutdown();
    Ok(())
}
