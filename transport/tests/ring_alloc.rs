//! Steady state of the async ring ends costs no heap allocation per
//! request: counted with dhat's heap profiler (its own test binary, as the
//! counting allocator is process-wide). Warm-up (set-up, the first rounds)
//! may allocate; then thousands of requests through the batch API and
//! through `call()` must allocate (almost) nothing: fewer blocks than one
//! per hundred requests, where one per request was the cost before (a
//! oneshot channel per call).

use std::time::Duration;

use xenring::ring::echo::{serve_echo, Msg64};
use xenring::ring::{RequestSink, ResponseStream, RingClient, RingServer};
use xenring::sim::{HostConfig, SimDomain, SimHost};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const N: u64 = 20_000;

fn blocks() -> u64 {
    dhat::HeapStats::get().total_blocks
}

/// Sends 32 requests from `seq` through the batch API and takes their 32
/// responses, with buffers the caller owns.
async fn round(
    sink: &mut RequestSink<Msg64, Msg64>,
    stream: &mut ResponseStream<Msg64, Msg64>,
    reqs: &mut Vec<Msg64>,
    rsps: &mut Vec<Msg64>,
    seq: u64,
) {
    reqs.clear();
    reqs.extend((seq..seq + 32).map(Msg64::request));
    rsps.clear();
    let mut sent = 0;
    while sent < reqs.len() {
        sent += sink.send_batch(&mut reqs[sent..]).await.unwrap();
    }
    while rsps.len() < 32 {
        stream.recv_batch(rsps, 64).await.unwrap();
    }
    assert_eq!(rsps[31].data, Msg64::answer(&reqs[31]).data);
}

#[test]
fn ring_requests_allocate_nothing_in_steady_state() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let dir = tempfile::tempdir().unwrap();
    let host = SimHost::start(dir.path().join("s"), HostConfig::default()).unwrap();
    let front = SimDomain::connect(host.control_path(), 1).unwrap();
    let back = SimDomain::connect(host.control_path(), 0).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (batch_blocks, call_blocks) = rt.block_on(async {
        let (client, ep) = RingClient::<Msg64, Msg64>::share(&front, 0, 4).unwrap();
        let server = RingServer::<Msg64, Msg64>::connect(&back, &ep).unwrap();
        let backend = tokio::spawn(serve_echo(server));
        let (mut sink, mut stream) = client.split();
        let mut reqs: Vec<Msg64> = Vec::with_capacity(64);
        let mut rsps: Vec<Msg64> = Vec::with_capacity(1024);
        // Batches of 32 through the batch API, one in flight at a time.
        for seq in (0..N).step_by(32) {
            round(&mut sink, &mut stream, &mut reqs, &mut rsps, seq).await;
        }
        let b0 = blocks();
        for seq in (0..N).step_by(32) {
            round(&mut sink, &mut stream, &mut reqs, &mut rsps, seq).await;
        }
        let batch_blocks = blocks() - b0;
        for seq in 0..N / 10 {
            client.call(Msg64::request(seq)).await.unwrap();
        }
        let c0 = blocks();
        for seq in 0..N {
            let req = Msg64::request(seq);
            assert_eq!(
                client.call(req).await.unwrap().data,
                Msg64::answer(&req).data
            );
        }
        let call_blocks = blocks() - c0;
        drop((sink, stream));
        client.close().await;
        backend.await.unwrap().unwrap();
        (batch_blocks, call_blocks)
    });
    drop((front, back));
    for _ in 0..200 {
        if host.report().domains.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    host.report().assert_clean();
    eprintln!("heap blocks in steady state: batch API {batch_blocks}, call() {call_blocks} for {N} requests each");
    assert!(
        batch_blocks < N / 100,
        "{batch_blocks} heap blocks for {N} requests through the batch API"
    );
    assert!(
        call_blocks < N / 100,
        "{call_blocks} heap blocks for {N} calls"
    );
}
