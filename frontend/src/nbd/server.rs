//! The transmission phase of the NBD server (the handshake is in
//! `handshake.rs`): requests are handled concurrently and answered as they
//! complete; one writer task sends the replies, so a reply and its data
//! are never interleaved with another's. Replies are simple, or
//! structured once negotiated: a read is then one `OFFSET_DATA` chunk (so
//! `NBD_CMD_FLAG_DF` always holds), an error one `ERROR` chunk with a
//! message, a block status one `BLOCK_STATUS` chunk; other commands keep
//! simple replies (the protocol allows it).
//!
//! Memory per connection is bounded: at most [`MAX_IN_FLIGHT`] requests
//! and [`MAX_INFLIGHT_BYTES`] of their data (a write's payload, a read's
//! reply) are held at once, from before a write's payload is read until
//! its reply has been written to the client. A client that sends requests
//! and never reads the replies fills that, and then the server reads no
//! more requests from it (as qemu-nbd does). A block status reply holds
//! at most [`MAX_EXTENTS`] extents.
//!
//! ```text
//!   C: request [data]                   S: reply [data]   (any order)
//!   C: DISC -> in-flight requests finish, then the connection closes
//! ```

use std::io;
use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::handshake::{handshake, proto_err, Session};
use super::proto::*;

/// Requests of one connection handled at once.
pub const MAX_IN_FLIGHT: usize = 64;
/// Largest request accepted (advertised as the maximum block size).
pub const MAX_REQUEST: u32 = 32 << 20;
/// Data bytes of one connection's requests held at once (payloads read,
/// replies not yet written): one request of [`MAX_REQUEST`] fits.
pub const MAX_INFLIGHT_BYTES: u32 = MAX_REQUEST;

/// What an export is, as the handshake tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportInfo {
    /// Size in bytes.
    pub size: u64,
    /// Writes are refused with `EPERM`.
    pub readonly: bool,
    /// `NBD_CMD_FLUSH` reaches stable storage.
    pub flush: bool,
    /// `NBD_CMD_TRIM` is served.
    pub trim: bool,
    /// `NBD_CMD_WRITE_ZEROES` can be fast (`NBD_CMD_FLAG_FAST_ZERO`).
    pub fast_zero: bool,
}

/// How `NBD_CMD_WRITE_ZEROES` may zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Zeroes {
    /// The range may be deallocated (no `NBD_CMD_FLAG_NO_HOLE`).
    pub may_trim: bool,
    /// Fail with `ENOTSUP` rather than be slow
    /// (`NBD_CMD_FLAG_FAST_ZERO`).
    pub fast: bool,
}

/// One extent of a block status reply (`base:allocation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Bytes (nonzero).
    pub length: u32,
    /// `NBD_STATE_HOLE` | `NBD_STATE_ZERO`, or 0 (data).
    pub flags: u32,
}

/// The most data an export may hold at once for one `NBD_CMD_CACHE` or
/// `NBD_CMD_WRITE_ZEROES` (it works through a longer range in pieces):
/// what such a request takes from the connection's byte budget.
pub const WORK_CHUNK: u32 = 1 << 20;

/// Most extents one block status reply carries (more are cut off: the
/// client asks again from where the reply ended).
pub const MAX_EXTENTS: usize = 1024;

/// An NBD error code (`EIO`, `EPERM`, ...; see [`super::proto`]).
pub type Errno = u32;

/// What the server serves. Offsets and lengths are checked against the
/// size before a call; any alignment may come.
pub trait Export: Send + Sync + 'static {
    /// The export's description (may wait until the device is there).
    fn info(&self) -> BoxFuture<'_, Result<ExportInfo, Errno>>;
    /// Reads `len` bytes at `offset`.
    fn read(&self, offset: u64, len: usize) -> BoxFuture<'_, Result<Vec<u8>, Errno>>;
    /// Writes `data` at `offset`.
    fn write(&self, offset: u64, data: Vec<u8>) -> BoxFuture<'_, Result<(), Errno>>;
    /// Makes every answered write durable.
    fn flush(&self) -> BoxFuture<'_, Result<(), Errno>>;
    /// Drops the data of a range (a hint; zeroes or old data may be read).
    fn trim(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<(), Errno>>;
    /// Writes zeroes over a range, as `how` allows (holding at most
    /// [`WORK_CHUNK`] bytes of zeroes at a time).
    fn write_zeroes(&self, offset: u64, len: u64, how: Zeroes) -> BoxFuture<'_, Result<(), Errno>>;
    /// The allocation of `len` bytes at `offset`: consecutive extents
    /// from `offset`, together at most `len` (fewer is fine). By default
    /// all data.
    fn block_status(&self, offset: u64, len: u32) -> BoxFuture<'_, Result<Vec<Extent>, Errno>> {
        let _ = offset;
        Box::pin(async move {
            Ok(vec![Extent {
                length: len,
                flags: 0,
            }])
        })
    }
    /// Prefetches a range (`NBD_CMD_CACHE`), holding at most
    /// [`WORK_CHUNK`] bytes at a time; by default nothing.
    fn cache(&self, offset: u64, len: u32) -> BoxFuture<'_, Result<(), Errno>> {
        let _ = (offset, len);
        Box::pin(async { Ok(()) })
    }
}

/// One reply for the writer task, with the share of the connection's
/// bounds its request took (given back once the reply is written).
struct Reply {
    head: Vec<u8>,
    data: Option<Vec<u8>>,
    _held: Held,
}

/// A request's slot and data bytes ([`MAX_IN_FLIGHT`],
/// [`MAX_INFLIGHT_BYTES`]).
struct Held {
    _slot: OwnedSemaphorePermit,
    _bytes: Option<OwnedSemaphorePermit>,
}

/// The connection's bounds.
struct Bounds {
    slots: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
}

impl Bounds {
    fn new() -> Bounds {
        Bounds {
            slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            bytes: Arc::new(Semaphore::new(MAX_INFLIGHT_BYTES as usize)),
        }
    }

    /// Waits for a slot and `bytes` (at most the whole budget).
    async fn take(&self, bytes: u32) -> io::Result<Held> {
        let closed = |_| io::Error::other("connection closing");
        let slot = self.slots.clone().acquire_owned().await.map_err(closed)?;
        let n = bytes.min(MAX_INFLIGHT_BYTES);
        let bytes = if n == 0 {
            None
        } else {
            Some(
                self.bytes
                    .clone()
                    .acquire_many_owned(n)
                    .await
                    .map_err(closed)?,
            )
        };
        Ok(Held {
            _slot: slot,
            _bytes: bytes,
        })
    }
}

/// Serves one NBD connection until the client disconnects (`Ok`) or
/// breaks the protocol or the connection (`Err`).
pub async fn serve<S>(stream: S, export: Arc<dyn Export>) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (r, w) = tokio::io::split(stream);
    let mut both = tokio::io::join(r, w);
    let Some(session) = handshake(&mut both, export.as_ref()).await? else {
        return Ok(());
    };
    let (r, w) = both.into_inner();
    let w = BufWriter::new(w);
    // Unbounded in type only: every reply holds a slot (MAX_IN_FLIGHT).
    let (tx, mut rx) = mpsc::unbounded_channel::<Reply>();
    let writer = tokio::spawn(async move {
        let mut w = w;
        while let Some(rep) = rx.recv().await {
            w.write_all(&rep.head).await?;
            if let Some(d) = &rep.data {
                w.write_all(d).await?;
            }
            if rx.is_empty() {
                w.flush().await?;
            }
            // Sent (or in the BufWriter, flushed before the next wait):
            // its slot and bytes go back only now.
            drop(rep);
        }
        w.flush().await?;
        w.shutdown().await
    });
    let bounds = Bounds::new();
    let result = transmission(r, &tx, &bounds, &export, session).await;
    // Let what is in flight finish and the writer drain, then stop.
    drop(tx);
    let wrote = writer
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e.to_string())));
    result.and(wrote)
}

async fn transmission<R: AsyncRead + Unpin>(
    mut r: R,
    tx: &mpsc::UnboundedSender<Reply>,
    bounds: &Bounds,
    export: &Arc<dyn Export>,
    session: Session,
) -> io::Result<()> {
    loop {
        let mut head = [0u8; Request::SIZE];
        match r.read_exact(&mut head).await {
            Ok(_) => {}
            // A client that just goes away: nothing more to do.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let req = Request::decode(&head).ok_or_else(|| proto_err("bad request magic"))?;
        if req.kind == CMD_DISC {
            return Ok(());
        }
        if req.kind == CMD_WRITE && req.length > MAX_REQUEST {
            return Err(proto_err(format!("write of {} bytes", req.length)));
        }
        // The data this request will hold: a write's payload, a read's
        // reply (a read over MAX_REQUEST is refused without data).
        let bytes = match req.kind {
            CMD_WRITE => req.length,
            CMD_READ if req.length <= MAX_REQUEST => req.length,
            CMD_CACHE | CMD_WRITE_ZEROES => req.length.min(WORK_CHUNK),
            _ => 0,
        };
        // Taken before the payload is read, given back when the reply
        // has been written: a client that reads no replies stops here.
        let held = bounds.take(bytes).await?;
        let mut data = None;
        if req.kind == CMD_WRITE {
            let mut d = vec![0u8; req.length as usize];
            r.read_exact(&mut d).await?;
            data = Some(d);
        }
        let export = export.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let reply = handle(export.as_ref(), &session, req, data, held).await;
            let _ = tx.send(reply);
        });
    }
}

/// What a request's reply carries.
enum Out {
    /// Nothing (success).
    Done,
    /// A read's data.
    Data(Vec<u8>),
    /// A block status's extents (`base:allocation`).
    Extents(Vec<Extent>),
}

/// A structured reply chunk's header.
fn chunk(flags: u16, kind: u16, handle: u64, length: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(20 + 16);
    b.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    b.extend_from_slice(&flags.to_be_bytes());
    b.extend_from_slice(&kind.to_be_bytes());
    b.extend_from_slice(&handle.to_be_bytes());
    b.extend_from_slice(&length.to_be_bytes());
    b
}

/// What an error says to a person (structured replies carry it).
fn errno_message(e: Errno) -> &'static str {
    match e {
        EPERM => "the export is read-only",
        EINVAL => "invalid request: command, flags, range or length",
        ENOSPC => "write past the end of the export",
        ENOTSUP => "not supported here",
        ESHUTDOWN => "the device is going away",
        EOVERFLOW => "too long",
        _ => "I/O error",
    }
}

async fn handle(
    export: &dyn Export,
    session: &Session,
    req: Request,
    data: Option<Vec<u8>>,
    held: Held,
) -> Reply {
    let res = run(export, session, &req, data).await;
    let structured = session.structured && matches!(req.kind, CMD_READ | CMD_BLOCK_STATUS);
    let (head, data) = match res {
        Ok(out) if !structured => match out {
            Out::Data(d) => (simple_reply(0, req.handle).to_vec(), Some(d)),
            _ => (simple_reply(0, req.handle).to_vec(), None),
        },
        Err(e) if !structured => (simple_reply(e, req.handle).to_vec(), None),
        Ok(Out::Data(d)) if !d.is_empty() => {
            let mut h = chunk(
                REPLY_FLAG_DONE,
                REPLY_TYPE_OFFSET_DATA,
                req.handle,
                8 + d.len() as u32,
            );
            h.extend_from_slice(&req.offset.to_be_bytes());
            (h, Some(d))
        }
        Ok(Out::Extents(ext)) => {
            let id = session.base_allocation.unwrap_or_default();
            let mut h = chunk(
                REPLY_FLAG_DONE,
                REPLY_TYPE_BLOCK_STATUS,
                req.handle,
                4 + 8 * ext.len() as u32,
            );
            h.extend_from_slice(&id.to_be_bytes());
            for e in ext {
                h.extend_from_slice(&e.length.to_be_bytes());
                h.extend_from_slice(&e.flags.to_be_bytes());
            }
            (h, None)
        }
        Ok(_) => (chunk(REPLY_FLAG_DONE, REPLY_TYPE_NONE, req.handle, 0), None),
        Err(e) => {
            let msg = errno_message(e).as_bytes();
            let mut h = chunk(
                REPLY_FLAG_DONE,
                REPLY_TYPE_ERROR,
                req.handle,
                6 + msg.len() as u32,
            );
            h.extend_from_slice(&e.to_be_bytes());
            h.extend_from_slice(&(msg.len() as u16).to_be_bytes());
            h.extend_from_slice(msg);
            (h, None)
        }
    };
    Reply {
        head,
        data,
        _held: held,
    }
}

/// The extents an export answered, made safe to send: nonzero, together
/// at most `len` (the last one cut), at most [`MAX_EXTENTS`] (one with
/// `REQ_ONE`). An export that answered nothing usable gets `EIO`.
fn clip_extents(ext: Vec<Extent>, len: u32, one: bool) -> Result<Vec<Extent>, Errno> {
    let max = if one { 1 } else { MAX_EXTENTS };
    let mut left = len;
    let mut out = Vec::new();
    for e in ext {
        if left == 0 || out.len() == max {
            break;
        }
        if e.length == 0 {
            continue;
        }
        let n = e.length.min(left);
        out.push(Extent {
            length: n,
            flags: e.flags,
        });
        left -= n;
    }
    if out.is_empty() {
        return Err(EIO);
    }
    Ok(out)
}

/// The command flags a request of `kind` may carry once the transmission
/// flags `tflags` were advertised (the NBD protocol, "Command flags"):
/// FUA on any command once `NBD_FLAG_SEND_FUA` is set; `NO_HOLE` and
/// `FAST_ZERO` (if advertised) on WRITE_ZEROES; `DF` on READ (if
/// advertised); `REQ_ONE` on BLOCK_STATUS. Anything else is `EINVAL`.
fn valid_flags(kind: u16, tflags: u16) -> u16 {
    let mut ok = 0;
    if tflags & FLAG_SEND_FUA != 0 {
        ok |= CMD_FLAG_FUA;
    }
    match kind {
        CMD_READ if tflags & FLAG_SEND_DF != 0 => ok |= CMD_FLAG_DF,
        CMD_WRITE_ZEROES => {
            ok |= CMD_FLAG_NO_HOLE;
            if tflags & FLAG_SEND_FAST_ZERO != 0 {
                ok |= CMD_FLAG_FAST_ZERO;
            }
        }
        CMD_BLOCK_STATUS => ok |= CMD_FLAG_REQ_ONE,
        _ => {}
    }
    ok
}

/// Whether the transmission flags `tflags` offer command `kind` (READ,
/// WRITE and DISC are always there).
fn offered(kind: u16, tflags: u16) -> bool {
    let need = match kind {
        CMD_READ | CMD_WRITE | CMD_DISC => return true,
        CMD_FLUSH => FLAG_SEND_FLUSH,
        CMD_TRIM => FLAG_SEND_TRIM,
        CMD_WRITE_ZEROES => FLAG_SEND_WRITE_ZEROES,
        CMD_CACHE => FLAG_SEND_CACHE,
        _ => return false,
    };
    tflags & need != 0
}

async fn run(
    export: &dyn Export,
    session: &Session,
    req: &Request,
    data: Option<Vec<u8>>,
) -> Result<Out, Errno> {
    let info = &session.info;
    let writes = matches!(req.kind, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES);
    if writes && info.readonly {
        return Err(EPERM);
    }
    let tflags = session.tflags;
    let status = req.kind == CMD_BLOCK_STATUS && session.base_allocation.is_some();
    if !(offered(req.kind, tflags) || status) || req.flags & !valid_flags(req.kind, tflags) != 0 {
        return Err(EINVAL);
    }
    let in_bounds = req
        .offset
        .checked_add(u64::from(req.length))
        .is_some_and(|end| end <= info.size);
    let fua = req.flags & CMD_FLAG_FUA != 0 && info.flush;
    match req.kind {
        CMD_READ => {
            if !in_bounds || req.length > MAX_REQUEST {
                return Err(EINVAL);
            }
            Ok(Out::Data(
                export.read(req.offset, req.length as usize).await?,
            ))
        }
        CMD_WRITE | CMD_WRITE_ZEROES | CMD_TRIM => {
            if !in_bounds {
                return Err(ENOSPC);
            }
            match (req.kind, data) {
                (CMD_WRITE, Some(d)) => export.write(req.offset, d).await?,
                (CMD_WRITE_ZEROES, _) => {
                    let how = Zeroes {
                        may_trim: req.flags & CMD_FLAG_NO_HOLE == 0,
                        fast: req.flags & CMD_FLAG_FAST_ZERO != 0,
                    };
                    export
                        .write_zeroes(req.offset, u64::from(req.length), how)
                        .await?
                }
                _ => export.trim(req.offset, u64::from(req.length)).await?,
            }
            if fua {
                export.flush().await?;
            }
            Ok(Out::Done)
        }
        CMD_FLUSH => export.flush().await.map(|_| Out::Done),
        CMD_CACHE => {
            if !in_bounds {
                return Err(EINVAL);
            }
            export
                .cache(req.offset, req.length)
                .await
                .map(|_| Out::Done)
        }
        CMD_BLOCK_STATUS => {
            if !in_bounds || req.length == 0 {
                return Err(EINVAL);
            }
            let ext = export.block_status(req.offset, req.length).await?;
            let one = req.flags & CMD_FLAG_REQ_ONE != 0;
            clip_extents(ext, req.length, one).map(Out::Extents)
        }
        _ => Err(EINVAL),
    }
}
