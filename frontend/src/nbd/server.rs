//! The server side of NBD over any byte stream: fixed newstyle
//! handshake, then the transmission phase with simple replies. Requests
//! are handled concurrently and answered as they complete; one writer task
//! sends the replies, so a reply and its data are never interleaved with
//! another's.
//!
//! Memory per connection is bounded: at most [`MAX_IN_FLIGHT`] requests
//! and [`MAX_INFLIGHT_BYTES`] of their data (a write's payload, a read's
//! reply) are held at once, from before a write's payload is read until
//! its reply has been written to the client. A client that sends requests
//! and never reads the replies fills that, and then the server reads no
//! more requests from it (as qemu-nbd does).
//!
//! ```text
//!   S: NBDMAGIC IHAVEOPT flags          C: client flags
//!   C: IHAVEOPT opt len data ...        S: replies (INFO, ACK, errors)
//!   ... until GO / EXPORT_NAME (transmission) or ABORT (close)
//!   C: request [data]                   S: simple reply [data]   (any order)
//!   C: DISC -> in-flight requests finish, then the connection closes
//! ```

use std::io;
use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

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
}

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
    /// Writes zeroes over a range.
    fn write_zeroes(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<(), Errno>>;
}

fn proto_err(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

async fn option_reply<W: AsyncWrite + Unpin>(
    w: &mut W,
    opt: u32,
    kind: u32,
    data: &[u8],
) -> io::Result<()> {
    let mut b = Vec::with_capacity(20 + data.len());
    b.extend_from_slice(&REPLY_MAGIC.to_be_bytes());
    b.extend_from_slice(&opt.to_be_bytes());
    b.extend_from_slice(&kind.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    w.write_all(&b).await
}

fn transmission_flags(i: &ExportInfo) -> u16 {
    let mut f = FLAG_HAS_FLAGS | FLAG_CAN_MULTI_CONN;
    if i.readonly {
        f |= FLAG_READ_ONLY;
    } else {
        f |= FLAG_SEND_WRITE_ZEROES;
        if i.trim {
            f |= FLAG_SEND_TRIM;
        }
    }
    if i.flush {
        f |= FLAG_SEND_FLUSH | FLAG_SEND_FUA;
    }
    f
}

/// The error message for an export name that is not ours.
fn unknown_export(name: &[u8]) -> String {
    format!(
        "no export named {:?}: the only export is the default one (\"\")",
        String::from_utf8_lossy(name)
    )
}

/// Runs the handshake; `Ok(Some(info))` when the client entered
/// transmission, `Ok(None)` when it aborted.
async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    export: &dyn Export,
) -> io::Result<Option<ExportInfo>> {
    let mut hello = Vec::with_capacity(18);
    hello.extend_from_slice(&NBDMAGIC.to_be_bytes());
    hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
    hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    s.write_all(&hello).await?;
    let cflags = s.read_u32().await?;
    if cflags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Err(proto_err(format!("unknown client flags {cflags:#x}")));
    }
    let no_zeroes = cflags & FLAG_C_NO_ZEROES != 0;
    loop {
        if s.read_u64().await? != IHAVEOPT {
            return Err(proto_err("option without IHAVEOPT"));
        }
        let opt = s.read_u32().await?;
        let len = s.read_u32().await?;
        if len > 64 << 10 {
            return Err(proto_err(format!("option {opt} of {len} bytes")));
        }
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data).await?;
        match opt {
            OPT_EXPORT_NAME => {
                if !data.is_empty() {
                    // No way to answer an error here: the spec says close.
                    return Err(proto_err(format!(
                        "NBD_OPT_EXPORT_NAME for unknown export {:?} (the only export is \"\")",
                        String::from_utf8_lossy(&data)
                    )));
                }
                let Ok(info) = export.info().await else {
                    return Err(proto_err("export unavailable"));
                };
                let mut b = Vec::with_capacity(134);
                b.extend_from_slice(&info.size.to_be_bytes());
                b.extend_from_slice(&transmission_flags(&info).to_be_bytes());
                if !no_zeroes {
                    b.extend_from_slice(&[0u8; 124]);
                }
                s.write_all(&b).await?;
                return Ok(Some(info));
            }
            OPT_ABORT => {
                option_reply(s, opt, REP_ACK, &[]).await?;
                return Ok(None);
            }
            OPT_LIST => {
                if len != 0 {
                    option_reply(s, opt, REP_ERR_INVALID, b"NBD_OPT_LIST takes no data").await?;
                    continue;
                }
                option_reply(s, opt, REP_SERVER, &0u32.to_be_bytes()).await?;
                option_reply(s, opt, REP_ACK, &[]).await?;
            }
            OPT_INFO | OPT_GO => {
                // u32 name length, name, u16 count, count x u16.
                let parsed = (|| {
                    let nl = u32::from_be_bytes(data.get(0..4)?.try_into().ok()?) as usize;
                    let name = data.get(4..4 + nl)?;
                    let rest = data.get(4 + nl..)?;
                    let n = u16::from_be_bytes(rest.get(0..2)?.try_into().ok()?) as usize;
                    let items = rest.get(2..2 + 2 * n)?;
                    if rest.len() != 2 + 2 * n {
                        return None;
                    }
                    Some((
                        name,
                        items
                            .chunks(2)
                            .map(|c| u16::from_be_bytes([c[0], c[1]]))
                            .collect::<Vec<_>>(),
                    ))
                })();
                let Some((name, wanted)) = parsed else {
                    option_reply(s, opt, REP_ERR_INVALID, b"malformed NBD_OPT_INFO/GO").await?;
                    continue;
                };
                if !name.is_empty() {
                    let msg = unknown_export(name);
                    option_reply(s, opt, REP_ERR_UNKNOWN, msg.as_bytes()).await?;
                    continue;
                }
                let info = match export.info().await {
                    Ok(i) => i,
                    Err(_) => {
                        option_reply(s, opt, REP_ERR_SHUTDOWN, b"export unavailable").await?;
                        continue;
                    }
                };
                let mut e = Vec::with_capacity(12);
                e.extend_from_slice(&INFO_EXPORT.to_be_bytes());
                e.extend_from_slice(&info.size.to_be_bytes());
                e.extend_from_slice(&transmission_flags(&info).to_be_bytes());
                option_reply(s, opt, REP_INFO, &e).await?;
                if wanted.contains(&INFO_BLOCK_SIZE) {
                    // Any alignment works (unaligned writes are
                    // read-modify-write below); 4 KiB is best.
                    let mut b = Vec::with_capacity(14);
                    b.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
                    b.extend_from_slice(&1u32.to_be_bytes());
                    b.extend_from_slice(&4096u32.to_be_bytes());
                    b.extend_from_slice(&MAX_REQUEST.to_be_bytes());
                    option_reply(s, opt, REP_INFO, &b).await?;
                }
                option_reply(s, opt, REP_ACK, &[]).await?;
                if opt == OPT_GO {
                    return Ok(Some(info));
                }
            }
            OPT_STARTTLS => {
                option_reply(s, opt, REP_ERR_POLICY, b"no TLS on a local export").await?;
            }
            _ => option_reply(s, opt, REP_ERR_UNSUP, &[]).await?,
        }
    }
}

/// One reply for the writer task, with the share of the connection's
/// bounds its request took (given back once the reply is written).
struct Reply {
    head: [u8; 16],
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
    let Some(info) = handshake(&mut both, export.as_ref()).await? else {
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
    let result = transmission(r, &tx, &bounds, &export, info).await;
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
    info: ExportInfo,
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
            let reply = handle(export.as_ref(), &info, req, data, held).await;
            let _ = tx.send(reply);
        });
    }
}

async fn handle(
    export: &dyn Export,
    info: &ExportInfo,
    req: Request,
    data: Option<Vec<u8>>,
    held: Held,
) -> Reply {
    let res = run(export, info, &req, data).await;
    match res {
        Ok(d) => Reply {
            head: simple_reply(0, req.handle),
            data: d,
            _held: held,
        },
        Err(e) => Reply {
            head: simple_reply(e, req.handle),
            data: None,
            _held: held,
        },
    }
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
    info: &ExportInfo,
    req: &Request,
    data: Option<Vec<u8>>,
) -> Result<Option<Vec<u8>>, Errno> {
    let writes = matches!(req.kind, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES);
    if writes && info.readonly {
        return Err(EPERM);
    }
    let tflags = transmission_flags(info);
    if !offered(req.kind, tflags) || req.flags & !valid_flags(req.kind, tflags) != 0 {
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
            Ok(Some(export.read(req.offset, req.length as usize).await?))
        }
        CMD_WRITE | CMD_WRITE_ZEROES | CMD_TRIM => {
            if !in_bounds {
                return Err(ENOSPC);
            }
            match (req.kind, data) {
                (CMD_WRITE, Some(d)) => export.write(req.offset, d).await?,
                (CMD_WRITE_ZEROES, _) => {
                    export
                        .write_zeroes(req.offset, u64::from(req.length))
                        .await?
                }
                _ => export.trim(req.offset, u64::from(req.length)).await?,
            }
            if fua {
                export.flush().await?;
            }
            Ok(None)
        }
        CMD_FLUSH => export.flush().await.map(|_| None),
        _ => Err(EINVAL),
    }
}
