//! A hostile frontend against the vbd backend daemon: this test joins the
//! frontend domain itself, shares a ring and data pages, and sends
//! malformed requests (segments outside their page, sectors past the end
//! of the image, too many or no segments, bad indirect descriptors, an
//! unknown operation, grants it never made). Each gets an error status,
//! the daemon logs it and keeps serving (a good write and read still
//! work), and the image file is untouched outside what the good write
//! wrote.

mod vbd_common;

use std::path::PathBuf;
use std::time::Duration;

use xenring::abi::blkif::{
    BlkifRequest, BlkifRequestDiscard, BlkifRequestIndirect, BlkifResponse, BlkifSegment,
    BLKIF_OP_DISCARD, BLKIF_OP_INDIRECT, BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_RSP_EOPNOTSUPP,
    BLKIF_RSP_ERROR, BLKIF_RSP_OKAY,
};
use xenring::abi::xenbus::XenbusState;
use xenring::platform::{Access, Platform};
use xenring::ring::RingClient;
use xenring::sim::{HostConfig, SimDomain};
use xenring_examples::system::System;

type Req = BlkifRequest<[u8; 112]>;
type Rsp = BlkifResponse<[u8; 16]>;

const SECTORS: u64 = 2048; // 1 MiB

fn rw(op: u8, sector: u64, segs: &[(u32, u8, u8)], nr: u8) -> Req {
    let mut r = Req::new_unchecked([0u8; 112]);
    r.set_operation(op);
    r.set_nr_segments(nr);
    r.set_sector_number(sector);
    for (i, &(gref, f, l)) in segs.iter().enumerate() {
        r.set_segment(
            i,
            BlkifSegment {
                gref,
                first_sect: f,
                last_sect: l,
            },
        )
        .unwrap();
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_errors_and_the_daemon_carries_on() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let image = dir.path().join("disk.img");
    let original = vec![0x11u8; (SECTORS * 512) as usize];
    std::fs::write(&image, &original)?;
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

    // We are the frontend: ring, data pages, an indirect page.
    let dom = SimDomain::connect(sys.host().control_path(), 1)?;
    let (ring, ep) = RingClient::<Req, Rsp>::share(&dom, 0, 1)?;
    let data = dom.share_pages(0, 2, Access::ReadWrite)?;
    let (page, page2) = (data.refs()[0], data.refs()[1]);
    let fe = id.frontend_dir();
    for (k, v) in [
        ("ring-ref", ep.refs[0].to_string()),
        ("event-channel", ep.port.to_string()),
        ("protocol", "x86_64-abi".to_string()),
        ("state", "3".to_string()),
    ] {
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

    let status = |r: Rsp| r.status();
    let mut bad: Vec<(&str, Req, i16)> = vec![
        (
            "segment past its page",
            rw(BLKIF_OP_WRITE, 0, &[(page, 0, 8)], 1),
            BLKIF_RSP_ERROR,
        ),
        (
            "first after last",
            rw(BLKIF_OP_READ, 0, &[(page, 5, 2)], 1),
            BLKIF_RSP_ERROR,
        ),
        (
            "past the end",
            rw(BLKIF_OP_WRITE, SECTORS - 4, &[(page, 0, 7)], 1),
            BLKIF_RSP_ERROR,
        ),
        (
            "sector wraps",
            rw(BLKIF_OP_WRITE, u64::MAX - 3, &[(page, 0, 7)], 1),
            BLKIF_RSP_ERROR,
        ),
        ("no segment", rw(BLKIF_OP_WRITE, 0, &[], 0), BLKIF_RSP_ERROR),
        (
            "12 segments",
            rw(BLKIF_OP_READ, 0, &[(page, 0, 0)], 12),
            BLKIF_RSP_ERROR,
        ),
        (
            "grant never made",
            rw(BLKIF_OP_WRITE, 0, &[(4000, 0, 7)], 1),
            BLKIF_RSP_ERROR,
        ),
        ("unknown operation", rw(4, 0, &[], 0), BLKIF_RSP_EOPNOTSUPP),
    ];
    let mut d = BlkifRequestDiscard::new_unchecked([0u8; 112]);
    d.set_operation(BLKIF_OP_DISCARD);
    d.set_sector_number(SECTORS - 1);
    d.set_nr_sectors(2);
    bad.push((
        "discard past the end",
        Req::new_unchecked(d.into_inner()),
        BLKIF_RSP_ERROR,
    ));
    for n in [0u16, 5000] {
        let mut r = BlkifRequestIndirect::new_unchecked([0u8; 112]);
        r.set_operation(BLKIF_OP_INDIRECT);
        r.set_indirect_op(BLKIF_OP_WRITE);
        r.set_nr_segments(n);
        r.set_indirect_gref(0, page2)?;
        bad.push((
            "indirect segment count",
            Req::new_unchecked(r.into_inner()),
            BLKIF_RSP_ERROR,
        ));
    }
    // An indirect page whose second descriptor is bad.
    let mut ind = vec![0u8; 4096];
    BlkifSegment {
        gref: page,
        first_sect: 0,
        last_sect: 7,
    }
    .write_to_indirect_page(&mut ind, 0)?;
    BlkifSegment {
        gref: page,
        first_sect: 0,
        last_sect: 200,
    }
    .write_to_indirect_page(&mut ind, 1)?;
    data.memory().write(4096, &ind);
    let mut r = BlkifRequestIndirect::new_unchecked([0u8; 112]);
    r.set_operation(BLKIF_OP_INDIRECT);
    r.set_indirect_op(BLKIF_OP_WRITE);
    r.set_nr_segments(2);
    r.set_indirect_gref(0, page2)?;
    bad.push((
        "bad indirect descriptor",
        Req::new_unchecked(r.into_inner()),
        BLKIF_RSP_ERROR,
    ));

    for (what, req, want) in bad {
        let got = status(ring.call(req).await?);
        assert_eq!(got, want, "{what}: status {got}");
    }

    // Still serving: a good write then read of sectors 8..16.
    data.memory().fill(0, 4096, 0x77);
    let got = ring.call(rw(BLKIF_OP_WRITE, 8, &[(page, 0, 7)], 1)).await?;
    assert_eq!(status(got), BLKIF_RSP_OKAY);
    data.memory().fill(0, 4096, 0);
    let got = ring.call(rw(BLKIF_OP_READ, 8, &[(page, 0, 7)], 1)).await?;
    assert_eq!(status(got), BLKIF_RSP_OKAY);
    let mut back = vec![0u8; 4096];
    data.memory().read(0, &mut back);
    assert!(
        back.iter().all(|&b| b == 0x77),
        "read back through the ring"
    );

    let mut expect = original.clone();
    expect[4096..8192].fill(0x77);
    assert!(
        std::fs::read(&image)? == expect,
        "the image changed outside the good write"
    );
    let mut backend = backend;
    assert!(
        backend.running(),
        "the backend daemon died:\n{}",
        backend.log()
    );
    assert!(
        backend.log().contains("bad request refused"),
        "no log line:\n{}",
        backend.log()
    );

    ring.close().await;
    sys.remove(&id, Duration::from_secs(10)).await?;
    drop(data);
    assert!(backend.terminate(Duration::from_secs(10))?.success());
    drop(dom);
    sys.wait_clean(Duration::from_secs(10)).await?;
    sys.shutdown();
    Ok(())
}
