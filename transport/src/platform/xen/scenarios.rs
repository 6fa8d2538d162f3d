//! The platform's unit scenarios on real Xen, for one domain talking to
//! itself (dom0 granting to dom0, binding its own ports): share, batch map,
//! read-only map, refused maps, grant copy, events, unmap notifications
//! (both the sharer's and the mapper's), page transfer refused, and a vchan
//! stream through the platform. They need a Xen domain, so they run in the
//! project's VM (`xenring-xentest platform`, see `integration/xen-vm/`),
//! not under `cargo test`'s host.
//!
//! Each scenario returns a one-line description of what it checked, or an
//! error saying what was wrong.

use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::platform::{
    Access, CopyPtr, DomId, EventChannel, GnttabStatus, GrantCopy, Platform, PlatformError, Result,
    UnmapNotify,
};
use crate::shm::{Protection, PAGE_SIZE};

/// How long one event may take before a scenario fails (none hangs).
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

fn fail(msg: impl Into<String>) -> PlatformError {
    PlatformError::Protocol(msg.into())
}

async fn wait(ch: &dyn EventChannel, what: &str) -> Result<()> {
    match tokio::time::timeout(EVENT_TIMEOUT, ch.wait()).await {
        Ok(r) => r,
        Err(_) => Err(fail(format!(
            "no event on port {} within {EVENT_TIMEOUT:?} ({what})",
            ch.local_port()
        ))),
    }
}

fn byte(i: usize, salt: u8) -> u8 {
    (i.wrapping_mul(7) as u8) ^ salt
}

/// Shares `pages` pages with ourselves, maps them in one batch, and checks
/// that each side sees the other's writes, page by page.
pub fn share_and_map(p: &dyn Platform, pages: usize) -> Result<String> {
    let me = p.domid();
    let share = p.share_pages(me, pages, Access::ReadWrite)?;
    if share.refs().len() != pages {
        return Err(fail(format!(
            "{} refs for {pages} pages",
            share.refs().len()
        )));
    }
    for i in 0..pages {
        share
            .memory()
            .write(i * PAGE_SIZE + 100, &[byte(i, 0x5a); 16]);
    }
    let map = p.map_grants(me, share.refs(), Access::ReadWrite)?;
    for i in 0..pages {
        let mut got = [0u8; 16];
        map.memory().read(i * PAGE_SIZE + 100, &mut got);
        if got != [byte(i, 0x5a); 16] {
            return Err(fail(format!(
                "page {i}: the mapping does not see the share's bytes"
            )));
        }
        map.memory()
            .write(i * PAGE_SIZE + 3000, &[byte(i, 0xa5); 8]);
    }
    for i in 0..pages {
        let mut got = [0u8; 8];
        share.memory().read(i * PAGE_SIZE + 3000, &mut got);
        if got != [byte(i, 0xa5); 8] {
            return Err(fail(format!(
                "page {i}: the share does not see the mapper's bytes"
            )));
        }
    }
    let ro = p.map_grants(me, &share.refs()[..1], Access::ReadOnly)?;
    if ro.memory().protection() != Protection::ReadOnly {
        return Err(fail("a read-only map is writable"));
    }
    let mut got = [0u8; 1];
    ro.memory().read(100, &mut got);
    if got[0] != byte(0, 0x5a) {
        return Err(fail("the read-only map does not see the share"));
    }
    ro.unmap()?;
    map.unmap()?;
    share.end().map_err(|(_, e)| e)?;
    Ok(format!(
        "share {pages} pages, batch map rw, both see each other's writes; read-only map; unmap; end"
    ))
}

/// A reference nobody granted is refused and named, alone and in a batch
/// (where nothing stays mapped); a read-only grant refuses a writable map.
pub fn refused_maps(p: &dyn Platform) -> Result<String> {
    let me = p.domid();
    let share = p.share_pages(me, 2, Access::ReadWrite)?;
    let good = share.refs()[0];
    let ro_share = p.share_pages(me, 1, Access::ReadOnly)?;
    // A reference far beyond what this domain has granted.
    let bad = 1_000_000;
    let e = p
        .map_grants(me, &[bad], Access::ReadWrite)
        .err()
        .ok_or_else(|| fail(format!("mapping ungranted ref {bad} succeeded")))?;
    if !e.to_string().contains(&bad.to_string()) {
        return Err(fail(format!("the error does not name ref {bad}: {e}")));
    }
    let e = p
        .map_grants(me, &[good, bad], Access::ReadWrite)
        .err()
        .ok_or_else(|| fail("a batch with a bad ref succeeded"))?;
    if !e.to_string().contains(&format!("[{bad}]")) {
        return Err(fail(format!(
            "the batch error does not single out ref {bad}: {e}"
        )));
    }
    // Nothing of the batch stayed mapped: the good ref maps and the share ends.
    p.map_grants(me, &[good], Access::ReadWrite)?.unmap()?;
    let e = p
        .map_grants(me, ro_share.refs(), Access::ReadWrite)
        .err()
        .ok_or_else(|| fail("a writable map of a read-only grant succeeded"))?;
    p.map_grants(me, ro_share.refs(), Access::ReadOnly)?
        .unmap()?;
    share.end().map_err(|(_, e)| e)?;
    ro_share.end().map_err(|(_, e)| e)?;
    Ok(format!(
        "ungranted ref refused and named, alone and in a batch; rw map of ro grant refused ({e})"
    ))
}

/// Grant copy both ways between our own pages and a granted page, and a
/// segment crossing its page end refused on its own.
pub fn grant_copy(p: &dyn Platform) -> Result<String> {
    let me = p.domid();
    let share = p.share_pages(me, 1, Access::ReadWrite)?;
    let gref = share.refs()[0];
    let local = p.alloc_pages(2)?;
    let data: Vec<u8> = (0..1000).map(|i| byte(i, 0x33)).collect();
    local.memory().write(PAGE_SIZE + 10, &data);
    share.memory().write(2000, &[0xee; 500]);
    let mut ops = [
        // local page 1 -> granted page at 100
        GrantCopy {
            source: CopyPtr::Local {
                pages: &*local,
                offset: PAGE_SIZE + 10,
            },
            dest: CopyPtr::Grant {
                domid: me,
                gref,
                offset: 100,
            },
            len: 1000,
            status: GnttabStatus::GeneralError,
        },
        // granted page at 2000 -> local page 0
        GrantCopy {
            source: CopyPtr::Grant {
                domid: me,
                gref,
                offset: 2000,
            },
            dest: CopyPtr::Local {
                pages: &*local,
                offset: 0,
            },
            len: 500,
            status: GnttabStatus::GeneralError,
        },
        // crosses the granted page's end
        GrantCopy {
            source: CopyPtr::Local {
                pages: &*local,
                offset: 0,
            },
            dest: CopyPtr::Grant {
                domid: me,
                gref,
                offset: 4000,
            },
            len: 200,
            status: GnttabStatus::Okay,
        },
    ];
    p.grant_copy(&mut ops)?;
    let st: Vec<GnttabStatus> = ops.iter().map(|o| o.status).collect();
    if st[0] != GnttabStatus::Okay || st[1] != GnttabStatus::Okay {
        return Err(fail(format!("copy statuses {st:?}")));
    }
    if st[2] == GnttabStatus::Okay {
        return Err(fail("a copy crossing the page end succeeded"));
    }
    let mut got = vec![0u8; 1000];
    share.memory().read(100, &mut got);
    if got != data {
        return Err(fail("local -> grant copy: wrong bytes in the granted page"));
    }
    let mut got = [0u8; 500];
    local.memory().read(0, &mut got);
    if got != [0xee; 500] {
        return Err(fail("grant -> local copy: wrong bytes in our page"));
    }
    // An ungranted reference gets a status, not an error of the batch.
    let mut bad = [GrantCopy {
        source: CopyPtr::Grant {
            domid: me,
            gref: 1_000_000,
            offset: 0,
        },
        dest: CopyPtr::Local {
            pages: &*local,
            offset: 0,
        },
        len: 16,
        status: GnttabStatus::Okay,
    }];
    p.grant_copy(&mut bad)?;
    if bad[0].status == GnttabStatus::Okay {
        return Err(fail("a copy from an ungranted ref succeeded"));
    }
    share.end().map_err(|(_, e)| e)?;
    Ok(format!(
        "copy local->grant and grant->local verified; page-crossing op refused ({}); \
         ungranted ref gives {}",
        st[2], bad[0].status
    ))
}

/// An unbound port and its interdomain binding: events both ways,
/// coalescing, and `rounds` ping-pongs.
pub async fn events(p: &dyn Platform, rounds: u32) -> Result<String> {
    let me = p.domid();
    let a = p.alloc_unbound_port(me)?;
    let b = p.bind_interdomain(me, a.local_port())?;
    if b.remote_domid() != me {
        return Err(fail("remote domid wrong"));
    }
    a.notify()?;
    wait(&*b, "a -> b").await?;
    b.notify()?;
    wait(&*a, "b -> a").await?;
    // Several notifications before a wait coalesce into (at least) one.
    for _ in 0..5 {
        a.notify()?;
    }
    wait(&*b, "coalesced").await?;
    let t = std::time::Instant::now();
    for i in 0..rounds {
        a.notify()?;
        wait(&*b, &format!("ping {i}")).await?;
        b.notify()?;
        wait(&*a, &format!("pong {i}")).await?;
    }
    let rtt = t.elapsed() / rounds.max(1);
    let (pa, pb) = (a.local_port(), b.local_port());
    b.close()?;
    a.close()?;
    Ok(format!(
        "ports {pa} <-> {pb}: events both ways, 5 notifies coalesced, {rounds} round trips \
         (mean {rtt:?})"
    ))
}

/// The mapper's unmap notification clears a byte in the sharer's page and
/// signals the sharer's port; the sharer's, set on its share, does the same
/// for the mapper when the share ends while still mapped.
pub async fn unmap_notify(p: &dyn Platform) -> Result<String> {
    let me = p.domid();
    let mut share = p.share_pages(me, 2, Access::ReadWrite)?;
    let sport = p.alloc_unbound_port(me)?;
    let mport = p.bind_interdomain(me, sport.local_port())?;
    share.memory().write(10, &[1]);
    share.memory().write(PAGE_SIZE + 20, &[1]);
    // Mapper side: byte 10 of page 0 and an event to the sharer.
    let mut map = p.map_grants(me, share.refs(), Access::ReadWrite)?;
    map.set_unmap_notify(UnmapNotify {
        clear_byte: Some(10),
        event: Some(mport.local_port()),
    })?;
    map.unmap()?;
    wait(&*sport, "the mapper's unmap notification").await?;
    let mut b = [9u8];
    share.memory().read(10, &mut b);
    if b[0] != 0 {
        return Err(fail("the mapper's unmap did not clear byte 10"));
    }
    // Sharer side: byte 20 of page 1 and an event to the mapper, fired when
    // the share ends although the mapper still maps it.
    share.set_unmap_notify(UnmapNotify {
        clear_byte: Some(PAGE_SIZE + 20),
        event: Some(sport.local_port()),
    })?;
    let map = p.map_grants(me, share.refs(), Access::ReadWrite)?;
    let mut b = [0u8];
    map.memory().read(PAGE_SIZE + 20, &mut b);
    if b[0] != 1 {
        return Err(fail("byte 20 of page 1 not set before the end"));
    }
    share.end().map_err(|(_, e)| e)?;
    wait(&*mport, "the sharer's unmap notification").await?;
    map.memory().read(PAGE_SIZE + 20, &mut b);
    if b[0] != 0 {
        return Err(fail(
            "the share's end did not clear byte 20 of page 1 in the mapping",
        ));
    }
    map.unmap()?;
    Ok(
        "mapper's unmap clears the byte + signals; sharer's end (still mapped) clears + signals"
            .into(),
    )
}

/// Page transfer is refused as unsupported on this platform.
pub fn transfer_unsupported(p: &dyn Platform) -> Result<String> {
    match p.offer_transfer_slot(p.domid()) {
        Err(PlatformError::Unsupported(what)) => {
            let page = p.alloc_pages(1)?;
            match p.transfer_page(page, p.domid(), 8) {
                Err(PlatformError::Unsupported(_)) => Ok(format!(
                    "offer_transfer_slot and transfer_page: unsupported ({what})"
                )),
                other => Err(fail(format!("transfer_page: {other:?}"))),
            }
        }
        Err(e) => Err(fail(format!("offer_transfer_slot: wrong error {e}"))),
        Ok(_) => Err(fail("offer_transfer_slot succeeded")),
    }
}

/// A vchan between our own two ends (rings of 2^`order` bytes; below 12
/// the in-page rings of orders 10 and 11), `bytes` each way, every byte
/// checked.
pub async fn vchan(p: &dyn Platform, order: u16, bytes: usize) -> Result<String> {
    let (left, right) = if order < 12 { (10, 11) } else { (order, order) };
    use crate::stream::{connect_direct, VchanAddress, VchanServer};
    let me: DomId = p.domid();
    let addr = VchanAddress {
        server: me,
        client: me,
        port: 1,
    };
    let server = VchanServer::create(p, addr, left, right).map_err(|e| fail(e.to_string()))?;
    let (rr, port) = server.offer();
    let accept = server.accept_direct();
    let client = connect_direct(p, addr, rr, port).map_err(|e| fail(e.to_string()))?;
    let srv = accept.await.map_err(|e| fail(e.to_string()))?;
    let t = std::time::Instant::now();
    let (a, b) = tokio::join!(pump(srv, bytes, 1), pump(client, bytes, 2));
    a?;
    b?;
    let secs = t.elapsed().as_secs_f64();
    Ok(format!(
        "vchan order {order}: {bytes} bytes each way verified ({:.1} MiB/s each way)",
        bytes as f64 / (1 << 20) as f64 / secs
    ))
}

/// How long a cross-domain exchange may move no byte before it counts as
/// stalled. Under software emulation on a busy machine an exchange can
/// take many minutes and still be sound: it is judged by progress, never
/// by its total time.
pub const STALL: Duration = Duration::from_secs(60);

/// A count of work done (bytes moved, steps taken), shared between the
/// work and a watchdog that fails it when the count stands still
/// ([`unless_stalled`]).
#[derive(Debug, Clone, Default)]
pub struct Progress(pub std::sync::Arc<std::sync::atomic::AtomicU64>);

impl Progress {
    /// Counts `n` more.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// The count so far.
    pub fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Runs `work` to its end, unless `progress` stands still for `stall`:
/// then it fails, naming `what` and how far it got. A slow exchange that
/// keeps moving passes however long it takes; a stalled one fails within
/// `stall`.
pub async fn unless_stalled<T, E: From<PlatformError>>(
    progress: &Progress,
    stall: Duration,
    what: &str,
    work: impl Future<Output = std::result::Result<T, E>>,
) -> std::result::Result<T, E> {
    let watchdog = async {
        let mut last = progress.get();
        let mut since = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(stall / 8).await;
            let now = progress.get();
            if now != last {
                (last, since) = (now, tokio::time::Instant::now());
            } else if since.elapsed() >= stall {
                return fail(format!(
                    "{what} stalled: no progress for {stall:?} (at {now})"
                ));
            }
        }
    };
    tokio::select! {
        r = work => r,
        e = watchdog => Err(e.into()),
    }
}

/// Writes `n` bytes of pattern `salt` (1 or 2) while reading and checking
/// `n` bytes of the other side's pattern (`3 - salt`): one end of a
/// verified two-way exchange (also used across domains by the VM jobs).
/// Fails if no byte moves either way for [`STALL`].
pub async fn pump<S>(s: S, n: usize, salt: u8) -> Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    pump_unless_stalled(s, n, salt, STALL).await
}

/// [`pump`] with the stall limit given.
pub async fn pump_unless_stalled<S>(s: S, n: usize, salt: u8, stall: Duration) -> Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let progress = Progress::default();
    let (pw, pr) = (progress.clone(), progress.clone());
    let (mut r, mut w) = tokio::io::split(s);
    let writer = async move {
        let mut buf = vec![0u8; 64 << 10];
        let mut off = 0;
        while off < n {
            let len = (n - off).min(buf.len());
            fill_stream(&mut buf[..len], off, salt);
            w.write_all(&buf[..len])
                .await
                .map_err(|e| fail(format!("write: {e}")))?;
            off += len;
            pw.add(len as u64);
        }
        w.flush().await.map_err(|e| fail(format!("flush: {e}")))?;
        Ok::<_, PlatformError>(w)
    };
    let reader = async move {
        let mut buf = vec![0u8; 64 << 10];
        let mut off = 0;
        let want = 3 - salt;
        while off < n {
            let got = r
                .read(&mut buf)
                .await
                .map_err(|e| fail(format!("read: {e}")))?;
            if got == 0 {
                return Err(fail(format!("end of stream after {off} of {n} bytes")));
            }
            if let Some(k) = (0..got).find(|&k| buf[k] != stream_byte(off + k, want)) {
                let first = describe_wrong(&buf[..got], off, k, want, salt);
                // Read on a little to see how far the damage goes.
                let mut runs = wrong_runs(&buf[..got], off, want);
                let mut more = off + got;
                let stop = (more + (1 << 20)).min(n);
                while more < stop && runs.len() < 16 {
                    let Ok(Ok(g)) =
                        tokio::time::timeout(Duration::from_secs(2), r.read(&mut buf)).await
                    else {
                        break;
                    };
                    if g == 0 {
                        break;
                    }
                    runs.extend(wrong_runs(&buf[..g], more, want));
                    more += g;
                }
                return Err(fail(format!(
                    "byte {} of {n} is wrong (read of {got} at {off}): {first}; \
                     wrong runs (start+len) in the next {} bytes: {runs:?}",
                    off + k,
                    more - off
                )));
            }
            off += got;
            pr.add(got as u64);
        }
        Ok(())
    };
    let both = async {
        let (w, r) = tokio::join!(writer, reader);
        r?;
        drop(w?);
        Ok(())
    };
    unless_stalled(&progress, stall, "the exchange", both).await
}

/// The stream pattern: every 8-byte word at stream offset `8w` holds an
/// invertible mix of `w` xor a mask of the side's salt (little-endian), so
/// no byte repeats with a short period and a misplaced word says where (and
/// from which side) it came from.
const PATTERN_K1: u64 = 0x9e37_79b9_7f4a_7c15;
const PATTERN_K2: u64 = 0xbf58_476d_1ce4_e5b9;

fn salt_mask(salt: u8) -> u64 {
    u64::from(salt) * 0x0101_0101_0101_0101
}

fn stream_word(w: u64, salt: u8) -> u64 {
    let x = w.wrapping_mul(PATTERN_K1);
    (x ^ x >> 32).wrapping_mul(PATTERN_K2) ^ salt_mask(salt)
}

/// The inverse of an odd number mod 2^64 (Newton's iteration).
fn inverse(k: u64) -> u64 {
    let mut inv = k;
    for _ in 0..6 {
        inv = inv.wrapping_mul(2u64.wrapping_sub(k.wrapping_mul(inv)));
    }
    inv
}

/// The word index a pattern word of `salt` encodes (`stream_word`'s inverse).
fn decode_word(v: u64, salt: u8) -> u64 {
    let x = (v ^ salt_mask(salt)).wrapping_mul(inverse(PATTERN_K2));
    (x ^ x >> 32).wrapping_mul(inverse(PATTERN_K1))
}

/// Byte `i` of side `salt`'s check pattern (see [`pump`]): every 8-byte
/// word encodes its offset and side, so a misplaced byte is found and
/// named. The VM's other checks (the vbd disk, libxenvchan's side in
/// `xen-c-bench.c`) use the same bytes.
pub fn stream_byte(i: usize, salt: u8) -> u8 {
    stream_word((i / 8) as u64, salt).to_le_bytes()[i % 8]
}

/// Fills `buf` with the pattern of side `salt` from stream offset `off`.
pub fn fill_stream(buf: &mut [u8], off: usize, salt: u8) {
    for (k, b) in buf.iter_mut().enumerate() {
        *b = stream_byte(off + k, salt);
    }
}

/// Runs of wrong bytes in `buf` (stream offset `off`), as (start, len);
/// right bytes between wrong ones closer than 16 bytes (a chance match)
/// do not split a run.
fn wrong_runs(buf: &[u8], off: usize, salt: u8) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (k, b) in buf.iter().enumerate() {
        if *b != stream_byte(off + k, salt) {
            match runs.last_mut() {
                Some((s, l)) if *s + *l + 16 > off + k => *l = off + k + 1 - *s,
                _ => runs.push((off + k, 1)),
            }
        }
    }
    runs
}

/// What the wrong bytes at `buf[k]` look like: hex around them and, for
/// each alignment, which stream word of which side they would be.
fn describe_wrong(buf: &[u8], off: usize, k: usize, want: u8, mine: u8) -> String {
    let lo = k.saturating_sub(8);
    let hi = (k + 24).min(buf.len());
    let hex: Vec<String> = buf[lo..hi].iter().map(|b| format!("{b:02x}")).collect();
    let mut guesses = Vec::new();
    for shift in 0..8 {
        let at = k + shift;
        if at + 8 > buf.len() {
            break;
        }
        let v = u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"));
        if v == 0 {
            guesses.push(format!("@{}: zeros", off + at));
            break;
        }
        for (who, salt) in [("peer's", want), ("our own", mine)] {
            let w = decode_word(v, salt);
            let src = w.wrapping_mul(8) as usize;
            if src < (1usize << 40) {
                guesses.push(format!(
                    "@{}: {who} stream byte {src} (offset {:+})",
                    off + at,
                    src as i64 - (off + at) as i64
                ));
            }
        }
    }
    format!(
        "bytes {}..{}: {}; decoded: {}",
        off + lo,
        off + hi,
        hex.join(""),
        if guesses.is_empty() {
            "no pattern word".to_string()
        } else {
            guesses.join(", ")
        }
    )
}

/// Runs every scenario, printing `PASS name: what` or `FAIL name: why`;
/// returns the number of failures.
pub async fn run_all(p: &dyn Platform) -> usize {
    let mut fails = 0;
    let mut report = |name: &str, r: Result<String>| match r {
        Ok(what) => println!("PASS platform/{name}: {what}"),
        Err(e) => {
            println!("FAIL platform/{name}: {e}");
            fails += 1;
        }
    };
    report("share_and_map", share_and_map(p, 16));
    report("refused_maps", refused_maps(p));
    report("grant_copy", grant_copy(p));
    report("events", timed(events(p, 200)).await);
    report("unmap_notify", timed(unmap_notify(p)).await);
    report("transfer_unsupported", transfer_unsupported(p));
    report("vchan_in_page", timed(vchan(p, 11, 1 << 20)).await);
    report("vchan_pages", timed(vchan(p, 16, 16 << 20)).await);
    fails
}

async fn timed<T>(f: impl Future<Output = Result<T>>) -> Result<T> {
    match tokio::time::timeout(Duration::from_secs(120), f).await {
        Ok(r) => r,
        Err(_) => Err(fail("did not finish within 120 s")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misplaced_pattern_word_names_its_origin() {
        for w in [0u64, 1, 7, 1 << 20, u64::from(u32::MAX)] {
            for salt in [1u8, 2] {
                assert_eq!(decode_word(stream_word(w, salt), salt), w);
            }
        }
        // 64 bytes of side 1's stream from offset 4096, but the reader
        // (side 2 reading side 1) expected offset 8192 there.
        let mut buf = vec![0u8; 64];
        fill_stream(&mut buf, 4096, 1);
        let d = describe_wrong(&buf, 8192, 0, 1, 2);
        assert!(d.contains("peer's stream byte 4096 (offset -4096)"), "{d}");
        assert_eq!(wrong_runs(&buf, 8192, 1).len(), 1);
        // The reader's own bytes.
        fill_stream(&mut buf, 8192, 2);
        let d = describe_wrong(&buf, 8192, 0, 1, 2);
        assert!(d.contains("our own stream byte 8192 (offset +0)"), "{d}");
        buf.fill(0);
        assert!(describe_wrong(&buf, 8192, 0, 1, 2).contains("zeros"));
        fill_stream(&mut buf, 8192, 1);
        assert!(wrong_runs(&buf, 8192, 1).is_empty());
        // The same bytes as xen-c-bench.c's pat() (its C side).
        let hex: String = (8000..8016)
            .map(|i| format!("{:02x}", stream_byte(i, 1)))
            .collect();
        assert_eq!(hex, "c8face67f9e0ce1416fd626ae3889e0d");
    }

    #[tokio::test(start_paused = true)]
    async fn slow_work_that_keeps_moving_is_never_cut_off() {
        // 200 s of work, a step every 10 s, against a 30 s stall limit:
        // a fixed total limit of 30 s would have failed it.
        let p = Progress::default();
        let t = tokio::time::Instant::now();
        let work = async {
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_secs(10)).await;
                p.add(1);
            }
            Ok::<_, PlatformError>(p.get())
        };
        let r: Result<u64> = unless_stalled(&p, Duration::from_secs(30), "slow", work).await;
        assert_eq!(r.unwrap(), 20);
        assert!(t.elapsed() >= Duration::from_secs(200));
    }

    #[tokio::test(start_paused = true)]
    async fn work_that_stops_moving_fails_within_the_stall_limit() {
        let p = Progress::default();
        let t = tokio::time::Instant::now();
        let work = async {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_secs(10)).await;
                p.add(5);
            }
            std::future::pending::<Result<()>>().await
        };
        let e = unless_stalled(&p, Duration::from_secs(30), "the exchange", work)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("the exchange stalled") && e.contains("at 15"),
            "{e}"
        );
        let took = t.elapsed();
        assert!(
            took >= Duration::from_secs(60) && took <= Duration::from_secs(65),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn a_pump_pair_verifies_both_ways() {
        let (a, b) = tokio::io::duplex(4096);
        let (x, y) = tokio::join!(pump(a, 1 << 20, 1), pump(b, 1 << 20, 2));
        x.unwrap();
        y.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_pump_whose_peer_is_silent_fails_as_stalled() {
        // The peer end is held open but never reads or writes.
        let (a, _peer) = tokio::io::duplex(4096);
        let e = pump_unless_stalled(a, 1 << 20, 1, Duration::from_secs(5))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("stalled"), "{e}");
    }
}
