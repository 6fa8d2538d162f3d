//! The async ring ends on an in-process simulated host: two domains, one
//! ring, tokio.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};

use super::echo::{serve_echo, Msg64};
use super::*;
use crate::sim::{HostConfig, SimDomain, SimHost};

const PROMPT: Duration = Duration::from_secs(1);

struct World {
    _dir: tempfile::TempDir,
    host: SimHost,
    front: SimDomain,
    back: SimDomain,
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let host = SimHost::start(dir.path().join("s"), HostConfig::default()).unwrap();
    let front = SimDomain::connect(host.control_path(), 1).unwrap();
    let back = SimDomain::connect(host.control_path(), 0).unwrap();
    World {
        _dir: dir,
        host,
        front,
        back,
    }
}

impl World {
    /// Waits (briefly) for deferred share ends and the host, then asserts
    /// nothing leaked.
    async fn assert_clean(self) {
        for _ in 0..200 {
            self.front.retry_deferred();
            if self.host.report().leaks().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.host.report().assert_clean();
    }
}

type Client = RingClient<Msg64, Msg64>;
type Server = RingServer<Msg64, Msg64>;

fn pair(w: &World, pages: usize) -> (Client, Server) {
    let (client, ep) = Client::share(&w.front, 0, pages).unwrap();
    let server = Server::connect(&w.back, &ep).unwrap();
    (client, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_calls_in_flight_are_matched_by_id_out_of_order() {
    let w = world();
    let (client, mut server) = pair(&w, 1);
    let backend = tokio::spawn(async move {
        // Take what is there, answer in reverse order of arrival.
        let mut answered = 0;
        while let Some(first) = server.next().await {
            let mut batch = vec![first.unwrap()];
            while let Some(Some(r)) = futures::FutureExt::now_or_never(server.next()) {
                batch.push(r.unwrap());
            }
            batch.reverse();
            let rsps: Vec<Msg64> = batch.iter().map(Msg64::answer).collect();
            server.respond_all(rsps.iter()).unwrap();
            answered += rsps.len();
        }
        answered
    });
    let calls: Vec<_> = (0..500u64)
        .map(|seq| {
            let c = client.clone();
            tokio::spawn(async move {
                let req = Msg64::request(seq);
                let rsp = c.call(req).await.unwrap();
                let mut expect = Msg64::answer(&req);
                expect.id = rsp.id;
                assert_eq!(rsp, expect, "request {seq} got someone else's answer");
            })
        })
        .collect();
    for c in calls {
        c.await.unwrap();
    }
    let stats = client.stats();
    assert_eq!((stats.produced, stats.consumed), (500, 500));
    client.close().await;
    assert_eq!(backend.await.unwrap(), 500);
    w.assert_clean().await;
}

#[tokio::test]
async fn more_callers_than_slots_wait_and_all_complete() {
    let w = world();
    let (client, server) = pair(&w, 1);
    // 64-byte entries in one page: 32 slots.
    let backend = tokio::spawn(serve_echo(server));
    let calls = futures::future::join_all((0..2000u64).map(|seq| {
        let c = client.clone();
        async move {
            let req = Msg64::request(seq);
            let rsp = c.call(req).await.unwrap();
            assert_eq!(rsp.data, Msg64::answer(&req).data);
        }
    }));
    calls.await;
    drop(client);
    assert_eq!(backend.await.unwrap().unwrap(), 2000);
    w.assert_clean().await;
}

#[tokio::test]
async fn sink_and_stream_pipeline_ten_thousand_requests() {
    let w = world();
    let (client, server) = pair(&w, 4);
    let backend = tokio::spawn(serve_echo(server));
    let (mut sink, mut stream) = client.split();
    let n = 10_000u64;
    let writer = tokio::spawn(async move {
        for seq in 0..n {
            sink.feed(Msg64::request(seq)).await.unwrap();
            if seq % 16 == 15 {
                sink.flush().await.unwrap();
            }
        }
        sink.flush().await.unwrap();
        sink
    });
    for seq in 0..n {
        // The echo backend answers in order.
        let rsp = stream.next().await.unwrap().unwrap();
        assert_eq!(rsp.data, Msg64::answer(&Msg64::request(seq)).data);
    }
    let stats = client.stats();
    assert!(stats.notifications < n / 2, "no suppression: {stats:?}");
    drop(writer.await.unwrap());
    drop(stream);
    client.close().await;
    assert_eq!(backend.await.unwrap().unwrap(), n);
    w.assert_clean().await;
}

#[tokio::test]
async fn closing_the_client_ends_outstanding_calls_and_the_server_stream() {
    let w = world();
    let (client, mut server) = pair(&w, 1);
    let waiting: Vec<_> = (0..5u64)
        .map(|seq| {
            let c = client.clone();
            tokio::spawn(async move { c.call(Msg64::request(seq)).await })
        })
        .collect();
    // The server takes the requests but never answers.
    for _ in 0..5 {
        server.next().await.unwrap().unwrap();
    }
    client.close().await;
    for c in waiting {
        let r = tokio::time::timeout(PROMPT, c).await.unwrap().unwrap();
        assert!(
            matches!(r, Err(AsyncRingError::Closed { peer: 0 })),
            "{r:?}"
        );
    }
    // The server sees the orderly close: end of stream.
    let end = tokio::time::timeout(PROMPT, server.next()).await.unwrap();
    assert!(end.is_none(), "{end:?}");
    server.close().await;
    w.assert_clean().await;
}

#[tokio::test]
async fn closing_the_server_ends_outstanding_calls() {
    let w = world();
    let (client, mut server) = pair(&w, 1);
    let c = client.clone();
    let call = tokio::spawn(async move { c.call(Msg64::request(1)).await });
    server.next().await.unwrap().unwrap();
    server.close().await;
    let r = tokio::time::timeout(PROMPT, call).await.unwrap().unwrap();
    assert!(
        matches!(r, Err(AsyncRingError::PeerClosed { peer: 0 })),
        "{r:?}"
    );
    // Later calls get the same error at once.
    let r = client.call(Msg64::request(2)).await;
    assert!(matches!(r, Err(AsyncRingError::PeerClosed { .. })), "{r:?}");
    drop(client);
    w.assert_clean().await;
}

/// A hostile backend: maps the ring and binds the port by hand, then acts
/// on the shared page directly.
fn hostile_backend(
    w: &World,
    ep: &RingEndpoint,
) -> (RingMemory, Arc<dyn crate::platform::EventChannel>) {
    let (mem, ch) = map_ring(&w.back, ep).unwrap();
    (mem, Arc::from(ch))
}

#[tokio::test]
async fn a_backend_scribbling_rsp_prod_ends_every_call_within_a_second() {
    let w = world();
    let (client, ep) = Client::share(&w.front, 0, 1).unwrap();
    let (mem, ch) = hostile_backend(&w, &ep);
    let calls: Vec<_> = (0..3u64)
        .map(|seq| {
            let c = client.clone();
            tokio::spawn(async move { c.call(Msg64::request(seq)).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let region: &crate::shm::Region = std::borrow::Borrow::borrow(&mem);
    region.atomic_u32(8).store(0xdead_beef, Ordering::Release);
    ch.notify().unwrap();
    for c in calls {
        let r = tokio::time::timeout(PROMPT, c)
            .await
            .expect("hung")
            .unwrap();
        assert!(
            matches!(
                r,
                Err(AsyncRingError::Ring(RingError::ResponseProducer {
                    rsp_prod: 0xdead_beef,
                    ..
                }))
            ),
            "{r:?}"
        );
    }
    assert!(client.closed_by().is_some());
    drop(client);
    drop((mem, ch));
    w.assert_clean().await;
}

#[tokio::test]
async fn a_response_with_an_unknown_id_closes_the_ring() {
    let w = world();
    let (client, ep) = Client::share(&w.front, 0, 1).unwrap();
    let (mem, ch) = hostile_backend(&w, &ep);
    let c = client.clone();
    let call = tokio::spawn(async move { c.call(Msg64::request(0)).await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    // Answer slot 0 with an id nobody asked for.
    let region: &crate::shm::Region = std::borrow::Borrow::borrow(&mem);
    let mut bad = [0u8; 64];
    Msg64 {
        id: 0x5eed,
        data: [7; 56],
    }
    .encode(&mut bad);
    region.write(64, &bad);
    region.atomic_u32(8).store(1, Ordering::Release);
    ch.notify().unwrap();
    let r = tokio::time::timeout(PROMPT, call)
        .await
        .expect("hung")
        .unwrap();
    assert!(
        matches!(
            r,
            Err(AsyncRingError::UnknownId {
                id: 0x5eed,
                peer: 0
            })
        ),
        "{r:?}"
    );
    drop(client);
    drop((mem, ch));
    w.assert_clean().await;
}

#[tokio::test]
async fn a_frontend_scribbling_req_prod_ends_the_server_stream_within_a_second() {
    let w = world();
    // The hostile frontend shares and initialises the ring by hand.
    let (mem, ch, ep) = share_ring(&w.front, 0, 1).unwrap();
    let region: &crate::shm::Region = std::borrow::Borrow::borrow(&mem);
    FrontRing::<Msg64, Msg64, &crate::shm::Region>::init(region).unwrap();
    let mut server = Server::connect(&w.back, &ep).unwrap();
    let next = tokio::spawn(async move {
        let r = server.next().await;
        (r, server)
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    region.atomic_u32(0).store(0x7000_0000, Ordering::Release);
    ch.notify().unwrap();
    let (r, server) = tokio::time::timeout(PROMPT, next)
        .await
        .expect("hung")
        .unwrap();
    assert!(
        matches!(
            r,
            Some(Err(AsyncRingError::Ring(RingError::RequestProducer {
                req_prod: 0x7000_0000,
                ..
            })))
        ),
        "{r:?}"
    );
    server.close().await;
    drop((mem, ch));
    w.assert_clean().await;
}

#[tokio::test]
async fn a_frontend_scribbling_request_slots_only_garbles_its_own_requests() {
    let w = world();
    let (mem, ch, ep) = share_ring(&w.front, 0, 1).unwrap();
    let region: &crate::shm::Region = std::borrow::Borrow::borrow(&mem);
    let mut front = FrontRing::<Msg64, Msg64, &crate::shm::Region>::init(region).unwrap();
    let mut server = Server::connect(&w.back, &ep).unwrap();
    front.put_request(&Msg64::request(1)).unwrap();
    let _ = front.push_requests().unwrap();
    // Overwrite the slot after pushing: the server copies whatever is
    // there once, and answers it.
    region.write(64, &[0xff; 64]);
    ch.notify().unwrap();
    let got = tokio::time::timeout(PROMPT, server.next()).await.unwrap();
    let got = got.unwrap().unwrap();
    assert_eq!(got.id, u64::MAX);
    server.respond(&Msg64::answer(&got)).unwrap();
    assert_eq!(front.take_response().unwrap().unwrap().id, u64::MAX);
    server.close().await;
    drop(front);
    drop((mem, ch));
    w.assert_clean().await;
}

#[tokio::test]
async fn netif_and_blkif_entries_carry_ids() {
    use crate::abi::blkif::BlkifRequest;
    use crate::abi::netif::NetifTxRequest;
    let mut b = BlkifRequest::new_unchecked([0u8; 112]);
    Tagged::set_id(&mut b, 0x1234_5678_9abc);
    assert_eq!(Tagged::id(&b), 0x1234_5678_9abc);
    let mut n = NetifTxRequest::new_unchecked([0u8; 12]);
    Tagged::set_id(
        &mut n,
        0x1_0007 & <NetifTxRequest<[u8; 12]> as Tagged>::ID_MASK,
    );
    assert_eq!(Tagged::id(&n), 7);
}

/// Waits for `fut` at most [`PROMPT`]; a hang is a test failure that says
/// what hung.
async fn promptly<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PROMPT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {PROMPT:?}"))
}

#[tokio::test]
async fn backend_death_ends_outstanding_calls_and_the_next_call_within_a_second() {
    let w = world();
    let (client, mut server) = pair(&w, 1);
    let calls: Vec<_> = (0..5u64)
        .map(|seq| {
            let c = client.clone();
            tokio::spawn(async move { c.call(Msg64::request(seq)).await })
        })
        .collect();
    // The backend takes the requests and dies before answering.
    for _ in 0..5 {
        server.next().await.unwrap().unwrap();
    }
    w.host.destroy_domain(0).unwrap();
    for c in calls {
        let r = promptly("an outstanding call", c).await.unwrap();
        assert!(
            matches!(r, Err(AsyncRingError::PeerGone { peer: 0 })),
            "{r:?}"
        );
    }
    let r = promptly("the next call", client.call(Msg64::request(9))).await;
    assert!(
        matches!(r, Err(AsyncRingError::PeerGone { peer: 0 })),
        "{r:?}"
    );
    assert!(matches!(
        client.closed_by(),
        Some(AsyncRingError::PeerGone { peer: 0 })
    ));
    drop(client);
    drop(server); // its domain is gone: dropping its handles is harmless
    w.assert_clean().await;
}

#[tokio::test]
async fn backend_death_while_the_client_is_idle_fails_the_next_call_within_a_second() {
    let w = world();
    // The client never called: its driver has not looked at the ring since
    // the backend attached.
    let (client, server) = pair(&w, 1);
    w.host.destroy_domain(0).unwrap();
    let r = promptly("the first call", client.call(Msg64::request(1))).await;
    assert!(
        matches!(r, Err(AsyncRingError::PeerGone { peer: 0 })),
        "{r:?}"
    );
    drop(client);
    drop(server);
    w.assert_clean().await;
}

#[tokio::test]
async fn backend_death_after_serving_fails_the_next_call_within_a_second() {
    let w = world();
    let (client, mut server) = pair(&w, 1);
    // One call answered, then the client is idle when the backend dies.
    let c = client.clone();
    let call = tokio::spawn(async move { c.call(Msg64::request(1)).await });
    let req = server.next().await.unwrap().unwrap();
    server.respond(&Msg64::answer(&req)).unwrap();
    promptly("the served call", call).await.unwrap().unwrap();
    w.host.destroy_domain(0).unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let r = promptly("the next call", client.call(Msg64::request(2))).await;
    assert!(
        matches!(r, Err(AsyncRingError::PeerGone { peer: 0 })),
        "{r:?}"
    );
    drop(client);
    drop(server);
    w.assert_clean().await;
}

#[tokio::test]
async fn frontend_death_ends_the_server_stream_with_an_error_within_a_second() {
    let w = world();
    let (client, mut server) = pair(&w, 1);
    // One request taken and unanswered, the stream waiting for more.
    let c = client.clone();
    let _call = tokio::spawn(async move { c.call(Msg64::request(1)).await });
    promptly("the first request", server.next())
        .await
        .unwrap()
        .unwrap();
    let next = tokio::spawn(async move {
        let r = server.next().await;
        (r, server)
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!next.is_finished());
    w.host.destroy_domain(1).unwrap();
    let (r, mut server) = promptly("the server stream", next).await.unwrap();
    assert!(
        matches!(r, Some(Err(AsyncRingError::PeerGone { peer: 1 }))),
        "{r:?}"
    );
    assert!(
        server.next().await.is_none(),
        "the stream ends after the error"
    );
    let r = server.respond(&Msg64::answer(&Msg64::request(1)));
    assert!(
        matches!(r, Err(AsyncRingError::PeerGone { peer: 1 })),
        "{r:?}"
    );
    server.close().await;
    drop(client); // its domain is gone: dropping its handles is harmless
    w.assert_clean().await;
}

#[tokio::test]
async fn frontend_death_before_the_server_polls_ends_the_stream_within_a_second() {
    let w = world();
    let (client, mut server) = pair(&w, 1);
    w.host.destroy_domain(1).unwrap();
    let r = promptly("the server stream", server.next()).await;
    assert!(
        matches!(r, Some(Err(AsyncRingError::PeerGone { peer: 1 }))),
        "{r:?}"
    );
    server.close().await;
    drop(client);
    w.assert_clean().await;
}
