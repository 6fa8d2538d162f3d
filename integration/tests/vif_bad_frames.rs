//! A hostile vif frontend (in this test process, as domain 1) sends the
//! real backend daemon malformed transmit requests: data crossing the page
//! end, frames shorter than an Ethernet header or longer than the MTU, a
//! reference it never granted, a chain of 19 slots, a chain whose sizes do
//! not add up, an extra-info slot nobody negotiated, a chain longer than
//! the ring (answered as it comes, never waited for to its end). A second
//! device sends an extra-info chain longer than the ring: the backend
//! fails that device (its data slots cannot be found) instead of waiting. Each is answered
//! NETIF_RSP_ERROR (the extra-info slot NETIF_RSP_NULL), dropped and
//! counted; the good frames around them go through to the TAP device, and
//! the daemon carries on and exits cleanly.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{SinkExt, StreamExt};
use tokio_util::sync::CancellationToken;
use xenring::abi::netif::{
    keys, NetifRxRequest, NetifRxResponse, NetifTxRequest, NetifTxResponse, NETIF_RSP_ERROR,
    NETIF_RSP_NULL, NETIF_RSP_OKAY, NETTXF_EXTRA_INFO, NETTXF_MORE_DATA, XEN_NETIF_EXTRA_FLAG_MORE,
};
use xenring::platform::{Access, Platform};
use xenring::ring::RingClient;
use xenring::sim::{HostConfig, SimDomain};
use xenring::xenbus::{read_error, Side};
use xenring::xenstore::XsClient;
use xenring_examples::demo_vif::NetNs;
use xenring_examples::system::System;
use xenring_frontend::{DeviceError, FrontendConn, FrontendDevice};

type TxReq = NetifTxRequest<[u8; 12]>;
type TxRsp = NetifTxResponse<[u8; 4]>;
type RxReq = NetifRxRequest<[u8; 8]>;
type RxRsp = NetifRxResponse<[u8; 8]>;

/// Slots of the over-long chain: more than the tx ring's 256.
const LONG_CHAIN: usize = 300;

/// (case, the statuses it got).
type Results = Arc<Mutex<Option<Vec<(&'static str, Vec<i16>)>>>>;

struct Hostile {
    results: Results,
}

fn req(gref: u32, offset: u16, flags: u16, size: u16) -> TxReq {
    let mut r = TxReq::new_unchecked([0u8; 12]);
    r.set_gref(gref);
    r.set_offset(offset);
    r.set_flags(flags);
    r.set_size(size);
    r
}

impl FrontendDevice for Hostile {
    fn kind(&self) -> &str {
        "vif"
    }

    fn connect(&self, mut conn: FrontendConn) -> BoxFuture<'static, Result<(), DeviceError>> {
        let results = self.results.clone();
        Box::pin(async move {
            let p = conn.platform().clone();
            let be = conn.backend();
            let fail = |e: &dyn std::fmt::Display| DeviceError::failed(e.to_string());
            let (tx, tx_ep) =
                RingClient::<TxReq, TxRsp>::share(p.as_ref(), be, 1).map_err(|e| fail(&e))?;
            let (_rx, rx_ep) =
                RingClient::<RxReq, RxRsp>::share(p.as_ref(), be, 1).map_err(|e| fail(&e))?;
            let page = p
                .share_pages(be, 1, Access::ReadOnly)
                .map_err(|e| fail(&e))?;
            // A frame: broadcast destination, our source, some type.
            let mut frame = vec![0xffu8; 6];
            frame.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x88, 0xb5]);
            frame.resize(4096, 0x5a);
            page.memory().write(0, &frame);
            let g = page.refs()[0];
            conn.set_key(keys::TX_RING_REF, tx_ep.refs[0].to_string());
            conn.set_key(keys::RX_RING_REF, rx_ep.refs[0].to_string());
            conn.set_key(keys::EVENT_CHANNEL_TX, tx_ep.port.to_string());
            conn.set_key(keys::EVENT_CHANNEL_RX, rx_ep.port.to_string());
            conn.set_key(keys::REQUEST_RX_COPY, "1");
            conn.set_key(keys::FEATURE_RX_NOTIFY, "1");
            conn.ready().await?;

            if conn.id().devid == 1 {
                // Device 1: an extra-info chain longer than the ring. The
                // backend cannot tell where the packet's data resumes and
                // must fail the device, not wait for the chain's end.
                let mut reqs = vec![req(g, 0, NETTXF_EXTRA_INFO, 60)];
                for _ in 0..LONG_CHAIN {
                    let mut extra = [0u8; 12];
                    extra[0] = 1; // XEN_NETIF_EXTRA_TYPE_GSO
                    extra[1] = XEN_NETIF_EXTRA_FLAG_MORE;
                    reqs.push(TxReq::new_unchecked(extra));
                }
                let (mut sink, _stream) = tx.split();
                let feed = async {
                    for r in reqs {
                        sink.feed(r).await?;
                    }
                    sink.flush().await
                };
                tokio::select! {
                    _ = feed => {}
                    _ = conn.stopped() => {}
                }
                conn.stopped().await;
                drop(page);
                return Ok(());
            }

            let chain = |n: usize, first: u16, each: u16| -> Vec<TxReq> {
                (0..n)
                    .map(|i| {
                        let last = i + 1 == n;
                        let flags = if last { 0 } else { NETTXF_MORE_DATA };
                        req(g, 0, flags, if i == 0 { first } else { each })
                    })
                    .collect()
            };
            let cases: Vec<(&'static str, Vec<TxReq>)> = vec![
                ("good", vec![req(g, 0, 0, 60)]),
                ("crosses the page end", vec![req(g, 4000, 0, 200)]),
                ("shorter than a header", vec![req(g, 0, 0, 10)]),
                ("longer than the MTU", vec![req(g, 0, 0, 2000)]),
                ("never granted", vec![req(g + 1000, 0, 0, 60)]),
                ("19 slots", chain(19, 19 * 60, 60)),
                ("sizes do not add up", chain(2, 100, 400)),
                (
                    "extra-info",
                    vec![req(g, 0, NETTXF_EXTRA_INFO, 60), req(0, 0, 0, 0)],
                ),
                // More slots than the ring has: the backend must answer
                // some before the chain's end can even be sent.
                ("a chain longer than the ring", chain(LONG_CHAIN, 60, 60)),
                ("good again", vec![req(g, 0, 0, 1514)]),
            ];
            let mut got = Vec::new();
            // Through the sink, so that the requests enter the ring in
            // order (a chain's slots must), and the responses come out of
            // the stream in the backend's order; the sink waits for free
            // slots when the ring is full.
            let (mut sink, mut stream) = tx.split();
            for (name, reqs) in cases {
                let n = reqs.len();
                let feed = async {
                    for r in reqs {
                        sink.feed(r).await?;
                    }
                    sink.flush().await
                };
                let take = async {
                    let mut statuses = Vec::with_capacity(n);
                    while statuses.len() < n {
                        match stream.next().await {
                            Some(r) => statuses.push(r?.status()),
                            None => break,
                        }
                    }
                    Ok(statuses)
                };
                let (fed, statuses) = tokio::join!(feed, take);
                fed.map_err(|e| fail(&e))?;
                got.push((
                    name,
                    statuses.map_err(|e: xenring::ring::AsyncRingError| fail(&e))?,
                ));
            }
            *results.lock().unwrap() = Some(got);
            conn.stopped().await;
            drop(page);
            Ok(())
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_are_refused_counted_and_survived() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = PathBuf::from(env!("CARGO_BIN_EXE_xenring-node"));
    let sys = System::start(dir.path(), node, HostConfig::default()).await?;
    sys.create_domain(1)?;
    let ns = NetNs::create("xrbad")?;
    let backend = sys.spawn_backend_in(ns.name(), 0, &["--devices", "vif"])?;

    // The hostile frontend: a frontend daemon of domain 1 in this process
    // (on domain 1's XenStore socket).
    let xs1 = XsClient::connect(sys.host().xenstore_path(1)?).await?;
    let dom1: Arc<dyn Platform> = Arc::new(SimDomain::connect(sys.host().control_path(), 1)?);
    let results: Results = Arc::default();
    let d = xenring_frontend::daemon(
        xs1,
        dom1,
        vec![Arc::new(Hostile {
            results: results.clone(),
        })],
    );
    let stop = CancellationToken::new();
    let daemon = tokio::spawn({
        let stop = stop.clone();
        async move { d.run(stop).await }
    });

    let id = sys.add_vif(1, 0, &[("tap", "vif1.0")], &[]).await?;
    sys.wait_connected(&id, Duration::from_secs(30)).await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let got = loop {
        if let Some(r) = results.lock().unwrap().take() {
            break r;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the hostile frontend got no answers\nbackend:\n{}",
            backend.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (ok, err, null) = (NETIF_RSP_OKAY, NETIF_RSP_ERROR, NETIF_RSP_NULL);
    let want: Vec<(&str, Vec<i16>)> = vec![
        ("good", vec![ok]),
        ("crosses the page end", vec![err]),
        ("shorter than a header", vec![err]),
        ("longer than the MTU", vec![err]),
        ("never granted", vec![err]),
        ("19 slots", vec![err; 19]),
        ("sizes do not add up", vec![err; 2]),
        ("extra-info", vec![err, null]),
        ("a chain longer than the ring", vec![err; LONG_CHAIN]),
        ("good again", vec![ok]),
    ];
    assert_eq!(got, want, "backend log:\n{}", backend.log());

    // Device 1 sends more extra-info slots than the ring holds: the
    // backend fails that device (bounded wait: the old backend waited for
    // the chain's end for ever and wrote no error).
    let id1 = sys.add_vif(1, 1, &[("tap", "vif1.1")], &[]).await?;
    let mut err = None;
    for _ in 0..600 {
        if let Some(e) = read_error(sys.xs(), &id1, Side::Backend).await? {
            err = Some(e);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let err = err.ok_or_else(|| {
        anyhow::anyhow!(
            "no error for device 1 after 30 s\nbackend:\n{}",
            backend.log()
        )
    })?;
    assert!(err.contains("extra-info"), "{err}");
    sys.remove(&id1, Duration::from_secs(10)).await?;

    sys.remove(&id, Duration::from_secs(10)).await?;
    stop.cancel();
    daemon.await??;
    let mut backend = backend;
    assert!(backend.running(), "the backend daemon survived");
    let out_path = dir.path().join("backend-dom0.out");
    assert!(backend.terminate(Duration::from_secs(10))?.success());
    let out = std::fs::read_to_string(out_path)?;
    assert!(out.contains("to tap 2 packets"), "{out}");
    assert!(out.contains("bad frames 8"), "{out}");
    sys.wait_clean(Duration::from_secs(10)).await?;
    sys.shutdown();
    Ok(())
}
