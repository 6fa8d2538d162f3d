//! A minimal NBD client (fixed newstyle, `NBD_OPT_GO`, simple replies),
//! for tests, the demo and benchmarks that need to know exactly which
//! requests were acknowledged. Requests may be issued concurrently from
//! several tasks; one reader task matches replies to them by handle.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;

use super::proto::*;

type Waiter = oneshot::Sender<Result<Vec<u8>, u32>>;
type Pending = Arc<Mutex<HashMap<u64, (usize, Waiter)>>>;

/// An error of a request: the server's errno, or the connection.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error (`EPERM`, `EIO`, ...).
    #[error("the server answered errno {0}")]
    Errno(u32),
    /// The connection failed or broke the protocol.
    #[error("nbd connection: {0}")]
    Io(#[from] io::Error),
}

/// A connected NBD client.
pub struct NbdClient {
    w: tokio::sync::Mutex<Box<dyn AsyncWrite + Send + Unpin>>,
    pending: Pending,
    next: AtomicU64,
    size: u64,
    flags: u16,
    reader: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for NbdClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdClient")
            .field("size", &self.size)
            .field("flags", &self.flags)
            .finish()
    }
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

impl NbdClient {
    /// Connects to a Unix socket and negotiates the default export.
    pub async fn connect_unix(path: &Path) -> io::Result<NbdClient> {
        let s = tokio::net::UnixStream::connect(path)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        NbdClient::handshake(s).await
    }

    /// Connects over TCP.
    pub async fn connect_tcp(addr: &str) -> io::Result<NbdClient> {
        let s = tokio::net::TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        NbdClient::handshake(s).await
    }

    /// Negotiates (`NBD_OPT_GO`, empty name) over `s`.
    pub async fn handshake<S: AsyncRead + AsyncWrite + Send + Unpin + 'static>(
        mut s: S,
    ) -> io::Result<NbdClient> {
        let pin = &mut s;
        if pin.read_u64().await? != NBDMAGIC || pin.read_u64().await? != IHAVEOPT {
            return Err(bad("not an NBD newstyle server"));
        }
        let hflags = pin.read_u16().await?;
        if hflags & FLAG_FIXED_NEWSTYLE == 0 {
            return Err(bad("server is not fixed newstyle"));
        }
        pin.write_u32(FLAG_C_FIXED_NEWSTYLE | (u32::from(hflags) & FLAG_C_NO_ZEROES))
            .await?;
        let mut opt = Vec::new();
        opt.extend_from_slice(&IHAVEOPT.to_be_bytes());
        opt.extend_from_slice(&OPT_GO.to_be_bytes());
        opt.extend_from_slice(&8u32.to_be_bytes());
        opt.extend_from_slice(&0u32.to_be_bytes()); // name length
        opt.extend_from_slice(&1u16.to_be_bytes());
        opt.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        pin.write_all(&opt).await?;
        let (mut size, mut flags) = (None, 0u16);
        loop {
            if pin.read_u64().await? != REPLY_MAGIC {
                return Err(bad("bad option reply magic"));
            }
            let _opt = pin.read_u32().await?;
            let kind = pin.read_u32().await?;
            let len = pin.read_u32().await? as usize;
            if len > 64 << 10 {
                return Err(bad("option reply too long"));
            }
            let mut data = vec![0u8; len];
            pin.read_exact(&mut data).await?;
            match kind {
                REP_ACK => break,
                REP_INFO if data.len() >= 12 && data[..2] == INFO_EXPORT.to_be_bytes() => {
                    size = Some(u64::from_be_bytes(data[2..10].try_into().expect("8")));
                    flags = u16::from_be_bytes([data[10], data[11]]);
                }
                REP_INFO => {}
                k => {
                    return Err(bad(format!(
                        "NBD_OPT_GO refused ({k:#x}): {}",
                        String::from_utf8_lossy(&data)
                    )))
                }
            }
        }
        let size = size.ok_or_else(|| bad("no NBD_INFO_EXPORT"))?;
        let (mut r, w) = tokio::io::split(s);
        let pending: Pending = Arc::default();
        let p = pending.clone();
        let reader = tokio::spawn(async move {
            let why = loop {
                let mut head = [0u8; 16];
                if let Err(e) = r.read_exact(&mut head).await {
                    break e;
                }
                if head[..4] != SIMPLE_REPLY_MAGIC.to_be_bytes() {
                    break bad("bad reply magic");
                }
                let err = u32::from_be_bytes(head[4..8].try_into().expect("4"));
                let handle = u64::from_be_bytes(head[8..16].try_into().expect("8"));
                let Some((len, tx)) = p.lock().expect("pending").remove(&handle) else {
                    break bad(format!("reply to unknown handle {handle}"));
                };
                if err != 0 {
                    let _ = tx.send(Err(err));
                    continue;
                }
                let mut data = vec![0u8; len];
                if let Err(e) = r.read_exact(&mut data).await {
                    break e;
                }
                let _ = tx.send(Ok(data));
            };
            tracing::debug!("nbd client reader stops: {why}");
            p.lock().expect("pending").clear();
        });
        Ok(NbdClient {
            w: tokio::sync::Mutex::new(Box::new(w)),
            pending,
            next: AtomicU64::new(1),
            size,
            flags,
            reader,
        })
    }

    /// The export's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Transmission flags (`NBD_FLAG_*`).
    pub fn flags(&self) -> u16 {
        self.flags
    }

    async fn call(
        &self,
        kind: u16,
        flags: u16,
        offset: u64,
        length: u32,
        data: Option<&[u8]>,
    ) -> Result<Vec<u8>, ClientError> {
        let handle = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let expect = if kind == CMD_READ { length as usize } else { 0 };
        self.pending
            .lock()
            .expect("pending")
            .insert(handle, (expect, tx));
        let req = Request {
            flags,
            kind,
            handle,
            offset,
            length,
        };
        {
            let mut w = self.w.lock().await;
            w.write_all(&req.encode()).await?;
            if let Some(d) = data {
                w.write_all(d).await?;
            }
            w.flush().await?;
        }
        match rx.await {
            Ok(Ok(d)) => Ok(d),
            Ok(Err(e)) => Err(ClientError::Errno(e)),
            Err(_) => Err(ClientError::Io(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "connection closed before the reply",
            ))),
        }
    }

    /// Reads `len` bytes at `offset`.
    pub async fn read(&self, offset: u64, len: u32) -> Result<Vec<u8>, ClientError> {
        self.call(CMD_READ, 0, offset, len, None).await
    }

    /// Writes `data` at `offset`; `fua`: durable before the reply.
    pub async fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), ClientError> {
        let f = if fua { CMD_FLAG_FUA } else { 0 };
        self.call(CMD_WRITE, f, offset, data.len() as u32, Some(data))
            .await
            .map(|_| ())
    }

    /// Flushes.
    pub async fn flush(&self) -> Result<(), ClientError> {
        self.call(CMD_FLUSH, 0, 0, 0, None).await.map(|_| ())
    }

    /// Trims a range.
    pub async fn trim(&self, offset: u64, len: u32) -> Result<(), ClientError> {
        self.call(CMD_TRIM, 0, offset, len, None).await.map(|_| ())
    }

    /// Writes zeroes over a range.
    pub async fn write_zeroes(&self, offset: u64, len: u32) -> Result<(), ClientError> {
        self.call(CMD_WRITE_ZEROES, 0, offset, len, None)
            .await
            .map(|_| ())
    }

    /// Sends `NBD_CMD_DISC` and closes.
    pub async fn disconnect(self) -> Result<(), ClientError> {
        let req = Request {
            flags: 0,
            kind: CMD_DISC,
            handle: 0,
            offset: 0,
            length: 0,
        };
        let mut w = self.w.lock().await;
        w.write_all(&req.encode()).await?;
        w.shutdown().await?;
        drop(w);
        let _ = self.reader.await;
        Ok(())
    }
}
