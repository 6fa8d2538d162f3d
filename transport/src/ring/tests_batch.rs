//! The batch API of the async ring ends and the semantics of their
//! polling: on an in-process simulated host, two domains, tokio. No timing
//! asserts: polling ends are observed through their counters and the
//! shared event fields.

use std::time::Duration;

use futures::StreamExt;

use super::echo::{serve_echo, Msg64};
use super::*;
use crate::abi::ring::REQ_EVENT_OFFSET;
use crate::polling::Polling;
use crate::sim::{HostConfig, SimDomain, SimHost};

type Client = RingClient<Msg64, Msg64>;
type Server = RingServer<Msg64, Msg64>;

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

fn pair(w: &World) -> (Client, Server) {
    // One page of 64-byte entries: 32 slots.
    let (client, ep) = Client::share(&w.front, 0, 1).unwrap();
    let server = Server::connect(&w.back, &ep).unwrap();
    (client, server)
}

/// Waits (bounded) until `cond` holds, yielding to the runtime between
/// looks; panics naming `what` if it never does.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..5000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("{what}: never happened");
}

#[tokio::test]
async fn a_batch_goes_out_with_one_push_and_at_most_one_notification() {
    let w = world();
    let (client, mut server) = pair(&w);
    server.set_polling(Polling::Off);
    let (mut sink, mut stream) = client.split();
    let mut reqs: Vec<Msg64> = (0..20).map(Msg64::request).collect();
    let before = client.stats();
    assert_eq!(sink.send_batch(&mut reqs).await.unwrap(), 20);
    let after = client.stats();
    assert_eq!(after.produced - before.produced, 20);
    // One push: one notify decision, so at most one event for 20 requests.
    assert!(after.notifications - before.notifications <= 1);
    assert_eq!(after.suppressed + after.notifications, 1);
    // Ids were written into the caller's requests, all different.
    let mut ids: Vec<u64> = reqs.iter().map(|r| r.id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 20);

    // Everything at hand, up to the limit, in one call each.
    let mut got = Vec::new();
    assert_eq!(server.next_batch(&mut got, 8).await.unwrap(), 8);
    assert_eq!(server.next_batch(&mut got, 100).await.unwrap(), 12);
    assert_eq!(got, reqs);
    let answers: Vec<Msg64> = got.iter().map(Msg64::answer).collect();
    let back_before = server.stats();
    server.respond_all(answers.iter()).unwrap();
    let back_after = server.stats();
    assert_eq!(
        back_after.notifications + back_after.suppressed
            - back_before.notifications
            - back_before.suppressed,
        1
    );

    let mut rsps = Vec::new();
    while rsps.len() < 20 {
        stream.recv_batch(&mut rsps, 64).await.unwrap();
    }
    assert_eq!(rsps, answers);
    drop((sink, stream));
    client.close().await;
    assert_eq!(server.next_batch(&mut got, 1).await.unwrap(), 0);
    server.close().await;
    w.assert_clean().await;
}

#[tokio::test]
async fn send_batch_takes_only_the_free_slots_and_the_rest_follows() {
    let w = world();
    let (client, server) = pair(&w);
    let backend = tokio::spawn(serve_echo(server));
    let (mut sink, mut stream) = client.split();
    let mut reqs: Vec<Msg64> = (0..1000).map(Msg64::request).collect();
    let first = sink.send_batch(&mut reqs[..40]).await.unwrap();
    // A fresh 32-slot ring: at most 32 fit.
    assert!((1..=32).contains(&first), "sent {first}");
    let reader = tokio::spawn(async move {
        let mut rsps = Vec::new();
        while rsps.len() < 1000 {
            let n = stream.recv_batch(&mut rsps, 7).await.unwrap();
            assert!((1..=7).contains(&n));
        }
        rsps
    });
    let mut sent = first;
    while sent < reqs.len() {
        sent += sink.send_batch(&mut reqs[sent..]).await.unwrap();
    }
    let rsps = reader.await.unwrap();
    // In order, each the answer to its request (ids included).
    let want: Vec<Msg64> = reqs.iter().map(Msg64::answer).collect();
    assert_eq!(rsps, want);
    drop(sink);
    client.close().await;
    assert_eq!(backend.await.unwrap().unwrap(), 1000);
    w.assert_clean().await;
}

#[tokio::test]
async fn a_polling_server_asks_for_no_event_and_the_client_sends_none() {
    let w = world();
    let (client, server) = pair(&w);
    // A budget that never runs out during the test: the server polls and
    // never sets req_event again after the first request.
    server.set_polling(Polling::Fixed(Duration::from_secs(3600)));
    let backend = tokio::spawn(serve_echo(server));
    client.call(Msg64::request(0)).await.unwrap();
    let before = client.stats();
    for seq in 1..200 {
        let req = Msg64::request(seq);
        assert_eq!(
            client.call(req).await.unwrap().data,
            Msg64::answer(&req).data
        );
    }
    let after = client.stats();
    assert_eq!(after.produced - before.produced, 199);
    assert_eq!(after.notifications, before.notifications);
    assert_eq!(after.suppressed - before.suppressed, 199);
    client.close().await;
    assert_eq!(backend.await.unwrap().unwrap(), 200);
    w.assert_clean().await;
}

#[tokio::test]
async fn a_polling_server_that_goes_idle_re_arms_its_event_and_is_woken() {
    let w = world();
    let (client, mut server) = pair(&w);
    server.set_polling(Polling::Fixed(Duration::from_micros(200)));
    let stats = server.responder();
    // Serve by hand so the test can look at the server's counters.
    let backend = tokio::spawn(async move {
        let mut reqs = Vec::new();
        loop {
            reqs.clear();
            if server.next_batch(&mut reqs, 64).await.unwrap() == 0 {
                let polled = server.poll_stats();
                server.close().await;
                break polled;
            }
            let rsps: Vec<Msg64> = reqs.iter().map(Msg64::answer).collect();
            server.respond_all(rsps.iter()).unwrap();
        }
    });
    client.call(Msg64::request(0)).await.unwrap();
    // The server's budget runs out while the client is idle: it must set
    // req_event (the next request's index) and sleep.
    let want_event = stats.stats().consumed as u32 + 1;
    drop(stats);
    until("the idle server re-arms req_event", || {
        req_event(&client) == want_event
    })
    .await;
    let before = client.stats();
    let req = Msg64::request(1);
    assert_eq!(
        client.call(req).await.unwrap().data,
        Msg64::answer(&req).data
    );
    // The push found the event armed: exactly one notification woke it.
    assert_eq!(client.stats().notifications - before.notifications, 1);
    client.close().await;
    let polled = backend.await.unwrap();
    assert!(polled.sleeps >= 1, "{polled:?}");
    assert!(polled.rounds >= 1, "{polled:?}");
    w.assert_clean().await;
}

/// The ring's shared `req_event`, read through the client's memory.
fn req_event(c: &Client) -> u32 {
    c.with_region(|r| {
        r.atomic_u32(REQ_EVENT_OFFSET)
            .load(std::sync::atomic::Ordering::SeqCst)
    })
    .unwrap_or(0)
}

#[tokio::test]
async fn a_polling_client_that_goes_idle_is_woken_by_the_event() {
    let w = world();
    let (client, server) = pair(&w);
    client.set_polling(Polling::Fixed(Duration::from_micros(100)));
    let (mut sink, mut stream) = client.split();
    // The backend answers only when told to, so the client's stream polls
    // out its budget, arms rsp_event and sleeps.
    let (go_tx, mut go_rx) = tokio::sync::mpsc::channel::<()>(1);
    let backend = tokio::spawn(async move {
        let mut server = server;
        let mut n = 0;
        while let Some(req) = server.next().await {
            go_rx.recv().await;
            server.respond(&Msg64::answer(&req.unwrap())).unwrap();
            n += 1;
        }
        n
    });
    futures::SinkExt::send(&mut sink, Msg64::request(5))
        .await
        .unwrap();
    let reader = tokio::spawn(async move { stream.next().await.unwrap().unwrap() });
    let c = client.clone();
    until("the client's stream sleeps", || c.poll_stats().sleeps >= 1).await;
    go_tx.send(()).await.unwrap();
    let rsp = reader.await.unwrap();
    assert_eq!(rsp.data, Msg64::answer(&Msg64::request(5)).data);
    drop(sink);
    drop(c);
    client.close().await;
    assert_eq!(backend.await.unwrap(), 1);
    w.assert_clean().await;
}

/// A request type whose ids are too few for a 32-slot ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tiny(Msg64);

impl RingEntry for Tiny {
    const SIZE: usize = 64;
    const ALIGN: usize = 8;
    fn decode(bytes: &[u8]) -> Self {
        Tiny(Msg64::decode(bytes))
    }
    fn encode(&self, out: &mut [u8]) {
        self.0.encode(out)
    }
}

impl Tagged for Tiny {
    const ID_MASK: u64 = 15;
    fn id(&self) -> u64 {
        self.0.id
    }
    fn set_id(&mut self, id: u64) {
        self.0.id = id;
    }
}

#[tokio::test]
async fn a_ring_with_more_slots_than_ids_is_refused() {
    let w = world();
    let e = RingClient::<Tiny, Msg64>::share(&w.front, 0, 1).unwrap_err();
    assert!(
        matches!(
            e,
            AsyncRingError::IdSpace {
                slots: 32,
                id_mask: 15
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("32 slots"), "{e}");
    w.assert_clean().await;
}

#[tokio::test]
async fn a_sink_dropped_with_unflushed_requests_gives_their_slots_back() {
    use futures::SinkExt;
    let w = world();
    let (client, server) = pair(&w);
    let backend = tokio::spawn(serve_echo(server));
    // Bounded: without the slots given back, the second round's first feed
    // would wait for a slot for ever.
    let rounds = async {
        for round in 0..3u64 {
            let (mut sink, _stream) = client.split();
            // Fill every slot, flush nothing, drop the sink.
            for seq in 0..32 {
                sink.feed(Msg64::request(round * 100 + seq)).await.unwrap();
            }
            drop(sink);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), rounds)
        .await
        .expect("the dropped sinks' slots came back");
    // Every slot is free again: a whole ring's worth of calls in flight.
    let calls: Vec<_> = (0..32u64)
        .map(|seq| {
            let c = client.clone();
            tokio::spawn(async move { c.call(Msg64::request(seq)).await.unwrap() })
        })
        .collect();
    for (seq, call) in calls.into_iter().enumerate() {
        let rsp = call.await.unwrap();
        assert_eq!(rsp.data, Msg64::answer(&Msg64::request(seq as u64)).data);
    }
    client.close().await;
    assert_eq!(backend.await.unwrap().unwrap(), 32);
    w.assert_clean().await;
}
