//! XenStore in a guest: `/dev/xen/xenbus` relayed to a Unix socket.
//!
//! In dom0 xenstored listens on a Unix socket; a guest reaches XenStore
//! only through the kernel's `/dev/xen/xenbus` character device (each open
//! is one connection: its own watches and transactions). The project's
//! [`XsConn`](super::conn::XsConn) speaks xs_wire over a Unix stream
//! socket, so a guest process runs a small bridge: a listening socket in a
//! private directory, and for every connection to it one fresh open of the
//! device, relayed both ways. Connect to [`XenbusBridge::path`]
//! (`XsClient::connect(bridge.path())`) and every client, including
//! [`XsClient`](super::XsClient)'s reconnects, works unchanged; other
//! programs (Debian's xenstore tools) get it as `XENSTORED_PATH`.
//!
//! ```text
//!   XsClient --unix--> bridge task --write(one message)--> /dev/xen/xenbus
//!            <--unix--             <--read(any bytes)----
//! ```
//!
//! The device takes exactly one xs_wire message per `write()` (a write
//! holding the start of a second message loses it), so the socket side is
//! framed: header, then `len` payload bytes, written in one call. Replies
//! are a byte stream and are copied as they come.
//!
//! A `WATCH` or `UNWATCH` is written only when every earlier request on
//! that open has had its reply read back. Linux (6.1) handles those two in
//! `write()` itself: it holds the open's message-buffer lock while it waits
//! for xenstored's answer, and its xenbus thread, which hands every reply
//! to its open under the same lock, delivers replies in order. A reply
//! owed to an earlier request on the same open then blocks the xenbus
//! thread, which blocks the watch's answer: the writer, the kernel's
//! xenbus thread and with it all of the guest's XenStore hang for good
//! (seen on Xen 4.17 with a pipelined read before a watch; libxenstore
//! never pipelines, so it never meets this).

use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{UnixListener, UnixStream};

use super::codec::XENSTORE_PAYLOAD_MAX;
use crate::abi::xs_wire::XsType;

/// Bytes of an xs_wire header.
const XSD_HEADER_LEN: usize = 16;

/// The guest's XenStore device.
pub const XENBUS_DEVICE: &str = "/dev/xen/xenbus";

/// A Unix socket that relays every connection to its own open of
/// `/dev/xen/xenbus`. Dropping it stops the relay and removes the socket.
#[derive(Debug)]
pub struct XenbusBridge {
    dir: PathBuf,
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl XenbusBridge {
    /// Opens `device` once to check it, and starts relaying connections to
    /// a socket in a new private directory under the temp dir. Must be
    /// called inside a tokio runtime.
    pub async fn start(device: &Path) -> std::io::Result<XenbusBridge> {
        let device = device.to_path_buf();
        drop(open_device(&device)?);
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "xenring-xenbus-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let path = dir.join("socket");
        let listener = UnixListener::bind(&path)?;
        let task = tokio::spawn(async move {
            loop {
                let sock = match listener.accept().await {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "xenbus bridge: accept failed");
                        continue;
                    }
                };
                let device = device.clone();
                tokio::spawn(async move {
                    if let Err(e) = relay(sock, &device).await {
                        tracing::debug!(error = %e, "xenbus bridge connection ended");
                    }
                });
            }
        });
        Ok(XenbusBridge { dir, path, task })
    }

    /// The socket to connect to (and to give other programs as
    /// `XENSTORED_PATH`).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for XenbusBridge {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn open_device(device: &Path) -> std::io::Result<OwnedFd> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(device)
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("opening {} (XenStore in a guest): {e}", device.display()),
            )
        })?;
    Ok(f.into())
}

/// What one open of the device still owes: replies to requests written to
/// it, counted by framing the bytes read back (watch events are not
/// replies).
#[derive(Debug, Default)]
struct Owed {
    /// Requests written whose reply has not been read back yet.
    replies: usize,
    /// The start of a message read only in part.
    partial: Vec<u8>,
}

impl Owed {
    /// A request of type `ty` may be written now: anything but a watch or
    /// an unwatch, and those only when no reply is owed (module docs).
    fn may_write(&self, ty: u32) -> bool {
        let synchronous = ty == XsType::Watch as u32 || ty == XsType::Unwatch as u32;
        !synchronous || self.replies == 0
    }

    /// A request was written.
    fn sent(&mut self) {
        self.replies += 1;
    }

    /// `bytes` were read from the device; the replies they complete are
    /// no longer owed.
    fn received(&mut self, bytes: &[u8]) {
        self.partial.extend_from_slice(bytes);
        let mut at = 0;
        while self.partial.len() - at >= XSD_HEADER_LEN {
            let head = &self.partial[at..at + XSD_HEADER_LEN];
            let ty = u32::from_le_bytes(head[0..4].try_into().expect("4 bytes"));
            let len = u32::from_le_bytes(head[12..16].try_into().expect("4 bytes")) as usize;
            if self.partial.len() - at < XSD_HEADER_LEN + len {
                break;
            }
            if ty != XsType::WatchEvent as u32 {
                self.replies = self.replies.saturating_sub(1);
            }
            at += XSD_HEADER_LEN + len;
        }
        self.partial.drain(..at);
    }
}

async fn relay(sock: UnixStream, device: &Path) -> std::io::Result<()> {
    let fd = open_device(device)?;
    // The device's poll() reports only readability (never POLLOUT), so only
    // reads go through the reactor; a write is taken at once (the kernel
    // queues the request and answers through the read side).
    let wfd = fd.try_clone()?;
    let afd = crate::shm::register_async_fd(fd, Interest::READABLE)?;
    let (mut rd, mut wr) = sock.into_split();
    // Both directions run in this one task; the lock is never held across
    // an await, and the Notify's stored permit means no wake-up is lost.
    let owed = std::sync::Mutex::new(Owed::default());
    let owed = || owed.lock().unwrap_or_else(|e| e.into_inner());
    let reply_read = tokio::sync::Notify::new();
    let to_device = async {
        let mut head = [0u8; XSD_HEADER_LEN];
        loop {
            match rd.read_exact(&mut head).await {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
            let len = u32::from_le_bytes(head[12..16].try_into().expect("4 bytes")) as usize;
            if len > XENSTORE_PAYLOAD_MAX {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "xenbus bridge: a message of {len} bytes exceeds {XENSTORE_PAYLOAD_MAX}"
                    ),
                ));
            }
            let mut msg = Vec::with_capacity(XSD_HEADER_LEN + len);
            msg.extend_from_slice(&head);
            msg.resize(XSD_HEADER_LEN + len, 0);
            rd.read_exact(&mut msg[XSD_HEADER_LEN..]).await?;
            let ty = u32::from_le_bytes(head[0..4].try_into().expect("4 bytes"));
            while !owed().may_write(ty) {
                reply_read.notified().await;
            }
            owed().sent();
            loop {
                match rustix::io::write(&wfd, &msg) {
                    Ok(n) if n == msg.len() => break,
                    Ok(n) => {
                        return Err(std::io::Error::other(format!(
                            "{XENBUS_DEVICE} took {n} of {} bytes of one message",
                            msg.len()
                        )))
                    }
                    Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => {
                        tokio::time::sleep(std::time::Duration::from_millis(1)).await
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
    };
    let from_device = async {
        let mut buf = vec![0u8; XSD_HEADER_LEN + XENSTORE_PAYLOAD_MAX];
        loop {
            let n = loop {
                let mut g = afd.readable().await?;
                match g.try_io(|fd| rustix::io::read(fd, &mut buf[..]).map_err(Into::into)) {
                    Ok(r) => break r?,
                    Err(_would_block) => continue,
                }
            };
            if n == 0 {
                return Ok::<(), std::io::Error>(());
            }
            owed().received(&buf[..n]);
            reply_read.notify_one();
            wr.write_all(&buf[..n]).await?;
        }
    };
    // Either side ending ends the connection (closing the device drops its
    // watches and aborts its transactions, as xenstored does for a socket).
    tokio::select! {
        r = to_device => r,
        r = from_device => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(ty: XsType, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        for w in [ty as u32, 7, 0, payload.len() as u32] {
            m.extend_from_slice(&w.to_le_bytes());
        }
        m.extend_from_slice(payload);
        m
    }

    #[test]
    fn a_watch_waits_for_every_earlier_reply_and_events_are_not_replies() {
        let mut o = Owed::default();
        assert!(o.may_write(XsType::Watch as u32));
        o.sent(); // a READ
        o.sent(); // a WRITE
        assert!(o.may_write(XsType::Read as u32));
        assert!(!o.may_write(XsType::Watch as u32));
        assert!(!o.may_write(XsType::Unwatch as u32));
        // The READ's reply and a watch event, split across reads.
        let mut bytes = msg(XsType::Read, b"value");
        bytes.extend(msg(XsType::WatchEvent, b"/a\0tok\0"));
        let (a, b) = bytes.split_at(19);
        o.received(a);
        assert_eq!(o.replies, 2, "half a reply is not a reply");
        o.received(b);
        assert_eq!(o.replies, 1, "the event did not count as a reply");
        assert!(!o.may_write(XsType::Watch as u32));
        o.received(&msg(XsType::Write, b"OK\0"));
        assert_eq!(o.replies, 0);
        assert!(o.partial.is_empty());
        assert!(o.may_write(XsType::Watch as u32));
    }
}
