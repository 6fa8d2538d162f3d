//! A two-domain self-test, written against [`Platform`] only: one domain
//! shares pages and an unbound port, the other maps them, binds, and the two
//! ping-pong events, each writing into the shared pages. `xenring-sim smoke`
//! runs it in two processes; the tests and benchmarks reuse it.
//!
//! The sharer announces itself with one line, [`Offer`], which whoever runs
//! the two sides hands to the mapper (XenStore does this job in real
//! drivers).
//!
//! ```text
//!   sharer (domain A)                      mapper (domain B)
//!   share pages, live byte = 1
//!   alloc unbound port for B
//!   "offer port=P refs=R0,R1" ---------->  map refs, check A's pattern
//!                                          bind to A:P, write B's pattern
//!   wait <------------------ notify ------ round 1
//!   notify ------------------------------> wait
//!   ... `rounds` times ...
//!                                          unmap, notify (goodbye)
//!   wait; check B's pattern; end share
//! ```

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::platform::{
    Access, DomId, EventChannel, GrantRef, Platform, PlatformError, Port, Result, UnmapNotify,
};
use crate::shm::PAGE_SIZE;

/// Offset of the sharer's live byte (1 while it lives; cleared by the host
/// when it dies).
pub const LIVE_BYTE: usize = 0;
const SHARER_PATTERN: usize = 16;
const MAPPER_PATTERN: usize = 2048;
/// How long one event may take before the test fails (no test hangs).
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// The sharer's announcement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// The sharer's domain.
    pub domid: DomId,
    /// Its unbound port.
    pub port: Port,
    /// The granted pages.
    pub refs: Vec<GrantRef>,
}

impl fmt::Display for Offer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let refs: Vec<String> = self.refs.iter().map(|r| r.to_string()).collect();
        write!(
            f,
            "offer domid={} port={} refs={}",
            self.domid,
            self.port,
            refs.join(",")
        )
    }
}

impl FromStr for Offer {
    type Err = PlatformError;
    fn from_str(s: &str) -> Result<Offer> {
        let bad = || PlatformError::Protocol(format!("not an offer line: {s:?}"));
        let mut it = s.trim().split(' ');
        if it.next() != Some("offer") {
            return Err(bad());
        }
        let mut field = |name: &str| -> Result<String> {
            let kv = it.next().ok_or_else(bad)?;
            kv.strip_prefix(name)
                .and_then(|v| v.strip_prefix('='))
                .map(str::to_owned)
                .ok_or_else(bad)
        };
        let domid = field("domid")?.parse().map_err(|_| bad())?;
        let port = field("port")?.parse().map_err(|_| bad())?;
        let refs = field("refs")?
            .split(',')
            .map(|r| r.parse().map_err(|_| bad()))
            .collect::<Result<Vec<_>>>()?;
        Ok(Offer { domid, port, refs })
    }
}

/// What a run measured.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    /// Event round trips done.
    pub rounds: u32,
    /// Time for all of them.
    pub elapsed: Duration,
}

impl Summary {
    /// Mean round-trip time.
    pub fn mean_round_trip(&self) -> Duration {
        self.elapsed / self.rounds.max(1)
    }
}

async fn wait(ch: &dyn EventChannel, what: &str) -> Result<()> {
    match tokio::time::timeout(EVENT_TIMEOUT, ch.wait()).await {
        Ok(r) => r,
        Err(_) => Err(PlatformError::Protocol(format!(
            "no event from domain {} on port {} within {EVENT_TIMEOUT:?} ({what})",
            ch.remote_domid(),
            ch.local_port()
        ))),
    }
}

fn pattern(domid: DomId, page: usize) -> [u8; 16] {
    let mut p = *b"domain ####/p###";
    p[7..11].copy_from_slice(format!("{domid:04}").as_bytes());
    p[13..16].copy_from_slice(format!("{:03}", page % 1000).as_bytes());
    p
}

/// The sharer's first half: share `pages` pages with `peer`, arm the live
/// byte and unmap notification, allocate the port. Returns the offer to
/// hand to the mapper and the state for [`sharer_finish`].
pub fn sharer_start(p: &dyn Platform, peer: DomId, pages: usize) -> Result<(Offer, SharerState)> {
    let mut share = p.share_pages(peer, pages, Access::ReadWrite)?;
    let port = p.alloc_unbound_port(peer)?;
    for i in 0..pages {
        share
            .memory()
            .write(i * PAGE_SIZE + SHARER_PATTERN, &pattern(p.domid(), i));
    }
    share.memory().write(LIVE_BYTE, &[1]);
    share.set_unmap_notify(UnmapNotify {
        clear_byte: Some(LIVE_BYTE),
        event: Some(port.local_port()),
    })?;
    let offer = Offer {
        domid: p.domid(),
        port: port.local_port(),
        refs: share.refs().to_vec(),
    };
    Ok((offer, SharerState { share, port, peer }))
}

/// What the sharer holds between its halves.
#[derive(Debug)]
pub struct SharerState {
    share: Box<dyn crate::platform::SharedPages>,
    port: Box<dyn EventChannel>,
    peer: DomId,
}

/// The sharer's second half: answer `rounds` pings, wait for the mapper's
/// goodbye, check what it wrote, end the share (which must succeed: the
/// mapper has unmapped) and close the port.
pub async fn sharer_finish(st: SharerState, rounds: u32) -> Result<Summary> {
    let start = Instant::now();
    for i in 0..rounds {
        wait(&*st.port, &format!("ping {i}")).await?;
        st.port.notify()?;
    }
    let elapsed = start.elapsed();
    wait(&*st.port, "goodbye").await?;
    let pages = st.share.refs().len();
    for i in 0..pages {
        let mut got = [0u8; 16];
        st.share
            .memory()
            .read(i * PAGE_SIZE + MAPPER_PATTERN, &mut got);
        if got != pattern(st.peer, i) {
            return Err(PlatformError::Protocol(format!(
                "page {i}: the mapper's pattern is not there: {:?}",
                String::from_utf8_lossy(&got)
            )));
        }
    }
    st.share.end().map_err(|(_, e)| e)?;
    st.port.close()?;
    Ok(Summary { rounds, elapsed })
}

/// The mapper: map the offer, check and write patterns, bind, ping `rounds`
/// times, unmap, say goodbye, close.
pub async fn mapper(p: &dyn Platform, offer: &Offer, rounds: u32) -> Result<Summary> {
    let map = p.map_grants(offer.domid, &offer.refs, Access::ReadWrite)?;
    for i in 0..offer.refs.len() {
        let mut got = [0u8; 16];
        map.memory().read(i * PAGE_SIZE + SHARER_PATTERN, &mut got);
        if got != pattern(offer.domid, i) {
            return Err(PlatformError::Protocol(format!(
                "page {i}: the sharer's pattern is not there: {:?}",
                String::from_utf8_lossy(&got)
            )));
        }
        map.memory()
            .write(i * PAGE_SIZE + MAPPER_PATTERN, &pattern(p.domid(), i));
    }
    let port = p.bind_interdomain(offer.domid, offer.port)?;
    let start = Instant::now();
    for i in 0..rounds {
        port.notify()?;
        wait(&*port, &format!("pong {i}")).await?;
    }
    let elapsed = start.elapsed();
    map.unmap()?;
    port.notify()?;
    port.close()?;
    Ok(Summary { rounds, elapsed })
}

/// The mapper of the death test: map the offer, bind, then wait until the
/// sharer dies: its unmap notification must clear the live byte and send
/// the event. Returns once both were seen.
pub async fn mapper_outlives_sharer(
    p: &dyn Platform,
    offer: &Offer,
    patience: Duration,
) -> Result<()> {
    let map = p.map_grants(offer.domid, &offer.refs, Access::ReadWrite)?;
    let port = p.bind_interdomain(offer.domid, offer.port)?;
    let mut live = [0u8];
    map.memory().read(LIVE_BYTE, &mut live);
    if live[0] != 1 {
        return Err(PlatformError::Protocol(
            "the sharer's live byte is not set".into(),
        ));
    }
    match tokio::time::timeout(patience, port.wait()).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(PlatformError::Protocol(format!(
                "no unmap notification from domain {} within {patience:?}",
                offer.domid
            )))
        }
    }
    map.memory().read(LIVE_BYTE, &mut live);
    if live[0] != 0 {
        return Err(PlatformError::Protocol(
            "event came but the live byte is still set".into(),
        ));
    }
    map.unmap()?;
    port.close()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offer_lines_round_trip_and_reject_garbage() {
        let o = Offer {
            domid: 1,
            port: 5,
            refs: vec![8, 9, 10],
        };
        assert_eq!(o.to_string(), "offer domid=1 port=5 refs=8,9,10");
        assert_eq!(o.to_string().parse::<Offer>().unwrap(), o);
        for bad in [
            "",
            "offer",
            "offer domid=1 port=x refs=8",
            "offer domid=1 port=5 refs=",
            "hello",
        ] {
            assert!(bad.parse::<Offer>().is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn both_halves_in_one_process() {
        let dir = tempfile::tempdir().unwrap();
        let h = super::super::SimHost::start(dir.path().join("s"), Default::default()).unwrap();
        let a = super::super::SimDomain::connect(h.control_path(), 1).unwrap();
        let b = super::super::SimDomain::connect(h.control_path(), 0).unwrap();
        let (offer, st) = sharer_start(&a, 0, 4).unwrap();
        let sharer = tokio::spawn(sharer_finish(st, 100));
        let m = mapper(&b, &offer, 100).await.unwrap();
        let s = sharer.await.unwrap().unwrap();
        assert_eq!((m.rounds, s.rounds), (100, 100));
        h.report().assert_clean();
    }
}
