//! The simulated host's control protocol: one request, one reply, over a
//! `SOCK_SEQPACKET` Unix socket, file descriptors passed with `SCM_RIGHTS`.
//!
//! Encoding: a message is one packet: a `u8` tag, then its fields,
//! little-endian, vectors as a `u32` count then the items. Packets are at
//! most [`MAX_PACKET`] bytes.
//!
//! Public (hidden from the docs) only for the fuzz targets in
//! `transport/fuzz`; not part of the stable API.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use super::report::{DomainReport, DomainState, HostReport};

/// Largest packet either side sends.
pub const MAX_PACKET: usize = 256 * 1024;
/// Most fds passed with one packet.
pub const MAX_FDS: usize = 4;

/// One side of a copy on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WirePtr {
    /// True: `value` is a grant reference of `domid`; false: a frame of the
    /// caller.
    pub is_gref: bool,
    /// Granting domain (for a gref).
    pub domid: u16,
    /// Grant reference or frame number.
    pub value: u64,
    /// Offset in the page.
    pub offset: u16,
}

/// One copy on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireCopy {
    /// Source.
    pub src: WirePtr,
    /// Destination.
    pub dst: WirePtr,
    /// Length.
    pub len: u16,
}

/// An unmap notification: clear byte `offset` of `frame` (if `clear`),
/// notify local `port` (if `event`). `mapping` ties it to a mapping handle
/// (fired on unmap); 0 ties it to a share (fired by `FireNotify`). Any left
/// fire when the domain dies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotifySpec {
    /// Mapping handle, or 0 for a share.
    pub mapping: u64,
    /// Frame holding the byte.
    pub frame: u64,
    /// Offset of the byte in the frame.
    pub offset: u16,
    /// Whether to clear the byte.
    pub clear: bool,
    /// Local port to notify.
    pub port: u32,
    /// Whether to notify.
    pub event: bool,
}

/// Requests to the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Join domain `domid` (created if it does not exist): the connection
    /// is then a session of that domain.
    Join { domid: u16 },
    /// Join as an administrator (reports, create, destroy); not a domain.
    Admin,
    /// Allocate pages.
    AllocPages { count: u32 },
    /// Free own pages.
    FreePages { frames: Vec<u64> },
    /// Map grants of `granter`.
    Map {
        granter: u16,
        writable: bool,
        refs: Vec<u32>,
    },
    /// Unmap a mapping handle.
    Unmap { handle: u64 },
    /// Grant copies.
    Copy { ops: Vec<WireCopy> },
    /// Transfer own `frame` into `to`'s slot `gref`.
    Transfer { frame: u64, to: u16, gref: u32 },
    /// Allocate an unbound port for `remote`.
    AllocUnbound { remote: u16 },
    /// Bind to `remote`'s unbound `port`.
    BindInterdomain { remote: u16, port: u32 },
    /// Close a port.
    ClosePort { port: u32 },
    /// Register an unmap notification.
    AddNotify(NotifySpec),
    /// Fire and forget a share's notification.
    FireNotify { id: u64 },
    /// The leak report.
    Report,
    /// Destroy a domain and all its sessions (admin or dom0 only).
    Destroy { domid: u16 },
    /// The path of domain `domid`'s xenstored socket (anyone may ask).
    XenstorePath { domid: u16 },
    /// Create a persistent domain, with no session (admin or dom0 only).
    CreateDomain { domid: u16 },
    /// One more chunk of the domain's grant table for this session.
    GrantChunk,
}

/// Replies from the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Done.
    Ok,
    /// A grant-table status other than okay.
    Status { status: i16, message: String },
    /// An errno (event channels, domains).
    Errno { errno: i32, message: String },
    /// Joined: fds `[machine memory, grant table]` come with it; the
    /// session may use grant references `refs_lo..refs_hi` (empty if the
    /// table had no free chunk).
    Joined {
        gnttab_entries: u32,
        machine_frames: u64,
        refs_lo: u32,
        refs_hi: u32,
    },
    /// Frames.
    Frames { frames: Vec<u64> },
    /// A mapping.
    Mapped { handle: u64, frames: Vec<u64> },
    /// Per-op copy statuses.
    Statuses { statuses: Vec<i16> },
    /// A port: fds `[receive eventfd, send eventfd]` come with it.
    Port { port: u32 },
    /// A notification id.
    NotifyId { id: u64 },
    /// The report.
    Report(HostReport),
    /// A filesystem path (UTF-8).
    Path { path: String },
    /// A chunk of grant references, `lo..hi`, for the session.
    Chunk { lo: u32, hi: u32 },
}

struct W(Vec<u8>);

impl W {
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.u32(s.len() as u32);
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    fn ptr(&mut self, p: &WirePtr) -> &mut Self {
        self.u8(p.is_gref as u8)
            .u16(p.domid)
            .u64(p.value)
            .u16(p.offset)
    }
}

struct R<'a>(&'a [u8]);

fn short() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "truncated control message")
}

impl R<'_> {
    fn take(&mut self, n: usize) -> io::Result<&[u8]> {
        if self.0.len() < n {
            return Err(short());
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> io::Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> io::Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn u32(&mut self) -> io::Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> io::Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn bool(&mut self) -> io::Result<bool> {
        Ok(self.u8()? != 0)
    }
    fn count(&mut self, item: usize) -> io::Result<usize> {
        let n = self.u32()? as usize;
        if n.saturating_mul(item) > self.0.len() {
            return Err(short());
        }
        Ok(n)
    }
    fn str(&mut self) -> io::Result<String> {
        let n = self.count(1)?;
        String::from_utf8(self.take(n)?.to_vec())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "non-UTF-8 string"))
    }
    fn vec_u64(&mut self) -> io::Result<Vec<u64>> {
        let n = self.count(8)?;
        (0..n).map(|_| self.u64()).collect()
    }
    fn vec_u32(&mut self) -> io::Result<Vec<u32>> {
        let n = self.count(4)?;
        (0..n).map(|_| self.u32()).collect()
    }
    fn ptr(&mut self) -> io::Result<WirePtr> {
        Ok(WirePtr {
            is_gref: self.bool()?,
            domid: self.u16()?,
            value: self.u64()?,
            offset: self.u16()?,
        })
    }
    fn end(&self) -> io::Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "trailing bytes in control message",
            ))
        }
    }
}

fn bad_tag(t: u8) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("unknown control message tag {t}"),
    )
}

impl Request {
    /// Encodes the request.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = W(Vec::with_capacity(64));
        match self {
            Request::Join { domid } => w.u8(0).u16(*domid),
            Request::Admin => w.u8(1),
            Request::AllocPages { count } => w.u8(2).u32(*count),
            Request::FreePages { frames } => {
                w.u8(3).u32(frames.len() as u32);
                frames.iter().for_each(|f| {
                    w.u64(*f);
                });
                &mut w
            }
            Request::Map {
                granter,
                writable,
                refs,
            } => {
                w.u8(4)
                    .u16(*granter)
                    .u8(*writable as u8)
                    .u32(refs.len() as u32);
                refs.iter().for_each(|r| {
                    w.u32(*r);
                });
                &mut w
            }
            Request::Unmap { handle } => w.u8(5).u64(*handle),
            Request::Copy { ops } => {
                w.u8(6).u32(ops.len() as u32);
                for op in ops {
                    w.ptr(&op.src).ptr(&op.dst).u16(op.len);
                }
                &mut w
            }
            Request::Transfer { frame, to, gref } => w.u8(7).u64(*frame).u16(*to).u32(*gref),
            Request::AllocUnbound { remote } => w.u8(8).u16(*remote),
            Request::BindInterdomain { remote, port } => w.u8(9).u16(*remote).u32(*port),
            Request::ClosePort { port } => w.u8(10).u32(*port),
            Request::AddNotify(n) => w
                .u8(11)
                .u64(n.mapping)
                .u64(n.frame)
                .u16(n.offset)
                .u8(n.clear as u8)
                .u32(n.port)
                .u8(n.event as u8),
            Request::FireNotify { id } => w.u8(12).u64(*id),
            Request::Report => w.u8(13),
            Request::Destroy { domid } => w.u8(14).u16(*domid),
            Request::XenstorePath { domid } => w.u8(15).u16(*domid),
            Request::CreateDomain { domid } => w.u8(16).u16(*domid),
            Request::GrantChunk => w.u8(17),
        };
        w.0
    }

    /// Decodes a request; malformed input is an `InvalidData` error.
    pub fn decode(b: &[u8]) -> io::Result<Request> {
        let mut r = R(b);
        let req = match r.u8()? {
            0 => Request::Join { domid: r.u16()? },
            1 => Request::Admin,
            2 => Request::AllocPages { count: r.u32()? },
            3 => Request::FreePages {
                frames: r.vec_u64()?,
            },
            4 => Request::Map {
                granter: r.u16()?,
                writable: r.bool()?,
                refs: r.vec_u32()?,
            },
            5 => Request::Unmap { handle: r.u64()? },
            6 => {
                let n = r.count(27)?;
                let ops = (0..n)
                    .map(|_| {
                        Ok(WireCopy {
                            src: r.ptr()?,
                            dst: r.ptr()?,
                            len: r.u16()?,
                        })
                    })
                    .collect::<io::Result<_>>()?;
                Request::Copy { ops }
            }
            7 => Request::Transfer {
                frame: r.u64()?,
                to: r.u16()?,
                gref: r.u32()?,
            },
            8 => Request::AllocUnbound { remote: r.u16()? },
            9 => Request::BindInterdomain {
                remote: r.u16()?,
                port: r.u32()?,
            },
            10 => Request::ClosePort { port: r.u32()? },
            11 => Request::AddNotify(NotifySpec {
                mapping: r.u64()?,
                frame: r.u64()?,
                offset: r.u16()?,
                clear: r.bool()?,
                port: r.u32()?,
                event: r.bool()?,
            }),
            12 => Request::FireNotify { id: r.u64()? },
            13 => Request::Report,
            14 => Request::Destroy { domid: r.u16()? },
            15 => Request::XenstorePath { domid: r.u16()? },
            16 => Request::CreateDomain { domid: r.u16()? },
            17 => Request::GrantChunk,
            t => return Err(bad_tag(t)),
        };
        r.end()?;
        Ok(req)
    }
}

impl Reply {
    /// Encodes the reply.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = W(Vec::with_capacity(64));
        match self {
            Reply::Ok => w.u8(0),
            Reply::Status { status, message } => w.u8(1).u16(*status as u16).str(message),
            Reply::Errno { errno, message } => w.u8(2).u32(*errno as u32).str(message),
            Reply::Joined {
                gnttab_entries,
                machine_frames,
                refs_lo,
                refs_hi,
            } => w
                .u8(3)
                .u32(*gnttab_entries)
                .u64(*machine_frames)
                .u32(*refs_lo)
                .u32(*refs_hi),
            Reply::Frames { frames } => {
                w.u8(4).u32(frames.len() as u32);
                frames.iter().for_each(|f| {
                    w.u64(*f);
                });
                &mut w
            }
            Reply::Mapped { handle, frames } => {
                w.u8(5).u64(*handle).u32(frames.len() as u32);
                frames.iter().for_each(|f| {
                    w.u64(*f);
                });
                &mut w
            }
            Reply::Statuses { statuses } => {
                w.u8(6).u32(statuses.len() as u32);
                statuses.iter().for_each(|s| {
                    w.u16(*s as u16);
                });
                &mut w
            }
            Reply::Port { port } => w.u8(7).u32(*port),
            Reply::NotifyId { id } => w.u8(8).u64(*id),
            Reply::Report(rep) => {
                w.u8(9).u64(rep.free_frames).u64(rep.orphan_frames);
                w.u32(rep.domains.len() as u32);
                for d in &rep.domains {
                    w.u16(d.domid)
                        .u8(d.state as u8)
                        .u8(d.persistent as u8)
                        .u32(d.sessions)
                        .u64(d.frames_owned)
                        .u32(d.grants_valid)
                        .u32(d.grants_mapped_by_peers)
                        .u32(d.mappings)
                        .u32(d.mapped_pages)
                        .u32(d.ports)
                        .u32(d.notifies);
                }
                w.u32(rep.xenstore.len() as u32);
                for x in &rep.xenstore {
                    w.str(x);
                }
                &mut w
            }
            Reply::Path { path } => w.u8(10).str(path),
            Reply::Chunk { lo, hi } => w.u8(11).u32(*lo).u32(*hi),
        };
        w.0
    }

    /// Decodes a reply.
    pub fn decode(b: &[u8]) -> io::Result<Reply> {
        let mut r = R(b);
        let rep = match r.u8()? {
            0 => Reply::Ok,
            1 => Reply::Status {
                status: r.u16()? as i16,
                message: r.str()?,
            },
            2 => Reply::Errno {
                errno: r.u32()? as i32,
                message: r.str()?,
            },
            3 => Reply::Joined {
                gnttab_entries: r.u32()?,
                machine_frames: r.u64()?,
                refs_lo: r.u32()?,
                refs_hi: r.u32()?,
            },
            4 => Reply::Frames {
                frames: r.vec_u64()?,
            },
            5 => Reply::Mapped {
                handle: r.u64()?,
                frames: r.vec_u64()?,
            },
            6 => {
                let n = r.count(2)?;
                let statuses = (0..n)
                    .map(|_| Ok(r.u16()? as i16))
                    .collect::<io::Result<_>>()?;
                Reply::Statuses { statuses }
            }
            7 => Reply::Port { port: r.u32()? },
            8 => Reply::NotifyId { id: r.u64()? },
            9 => {
                let free_frames = r.u64()?;
                let orphan_frames = r.u64()?;
                let n = r.count(40)?;
                let mut domains = Vec::with_capacity(n);
                for _ in 0..n {
                    domains.push(DomainReport {
                        domid: r.u16()?,
                        state: DomainState::from_u8(r.u8()?).ok_or_else(short)?,
                        persistent: r.bool()?,
                        sessions: r.u32()?,
                        frames_owned: r.u64()?,
                        grants_valid: r.u32()?,
                        grants_mapped_by_peers: r.u32()?,
                        mappings: r.u32()?,
                        mapped_pages: r.u32()?,
                        ports: r.u32()?,
                        notifies: r.u32()?,
                    });
                }
                let n = r.count(4)?;
                let xenstore = (0..n).map(|_| r.str()).collect::<io::Result<_>>()?;
                Reply::Report(HostReport {
                    free_frames,
                    orphan_frames,
                    domains,
                    xenstore,
                })
            }
            10 => Reply::Path { path: r.str()? },
            11 => Reply::Chunk {
                lo: r.u32()?,
                hi: r.u32()?,
            },
            t => return Err(bad_tag(t)),
        };
        r.end()?;
        Ok(rep)
    }
}

/// Sends one packet with `fds` attached.
pub fn send_packet(sock: BorrowedFd<'_>, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut anc = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !anc.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("too many fds for one control message"));
    }
    let n = sendmsg(sock, &[IoSlice::new(data)], &mut anc, SendFlags::NOSIGNAL)?;
    if n != data.len() {
        return Err(io::Error::other("short send of a control packet"));
    }
    Ok(())
}

/// Sends a connection's last packet without waiting (no fds): if the peer
/// cannot take it now, it is dropped.
pub fn send_farewell(sock: BorrowedFd<'_>, data: &[u8]) -> io::Result<()> {
    let mut anc = SendAncillaryBuffer::new(&mut []);
    sendmsg(
        sock,
        &[IoSlice::new(data)],
        &mut anc,
        SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
    )?;
    Ok(())
}

/// Receives one packet and the fds attached to it. `Ok(None)` on EOF.
pub fn recv_packet(sock: BorrowedFd<'_>) -> io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    let mut buf = vec![0u8; MAX_PACKET];
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut anc = RecvAncillaryBuffer::new(&mut space);
    let msg = loop {
        match recvmsg(
            sock,
            &mut [IoSliceMut::new(&mut buf)],
            &mut anc,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(m) => break m,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    let mut fds = Vec::new();
    for m in anc.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = m {
            fds.extend(rights);
        }
    }
    if msg.bytes == 0 && fds.is_empty() {
        return Ok(None);
    }
    if msg.flags.contains(rustix::net::ReturnFlags::TRUNC) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "control packet too large",
        ));
    }
    buf.truncate(msg.bytes);
    Ok(Some((buf, fds)))
}

/// Borrow helper for a slice of owned fds.
pub fn borrow_all(fds: &[OwnedFd]) -> Vec<BorrowedFd<'_>> {
    fds.iter().map(|f| f.as_fd()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_round_trips() {
        let p = WirePtr {
            is_gref: true,
            domid: 3,
            value: 99,
            offset: 12,
        };
        let reqs = vec![
            Request::Join { domid: 7 },
            Request::Admin,
            Request::AllocPages { count: 3 },
            Request::FreePages {
                frames: vec![1, 2, 3],
            },
            Request::Map {
                granter: 1,
                writable: true,
                refs: vec![8, 9],
            },
            Request::Unmap { handle: 5 },
            Request::Copy {
                ops: vec![WireCopy {
                    src: p,
                    dst: WirePtr {
                        is_gref: false,
                        ..p
                    },
                    len: 100,
                }],
            },
            Request::Transfer {
                frame: 10,
                to: 2,
                gref: 11,
            },
            Request::AllocUnbound { remote: 4 },
            Request::BindInterdomain { remote: 4, port: 6 },
            Request::ClosePort { port: 6 },
            Request::AddNotify(NotifySpec {
                mapping: 0,
                frame: 5,
                offset: 9,
                clear: true,
                port: 3,
                event: false,
            }),
            Request::FireNotify { id: 4 },
            Request::Report,
            Request::Destroy { domid: 9 },
            Request::XenstorePath { domid: 3 },
            Request::CreateDomain { domid: 5 },
            Request::GrantChunk,
        ];
        for r in reqs {
            assert_eq!(Request::decode(&r.encode()).unwrap(), r);
        }
    }

    #[test]
    fn every_reply_round_trips() {
        let reps = vec![
            Reply::Ok,
            Reply::Status {
                status: -8,
                message: "x".into(),
            },
            Reply::Errno {
                errno: 22,
                message: "y".into(),
            },
            Reply::Joined {
                gnttab_entries: 4096,
                machine_frames: 1 << 18,
                refs_lo: 8,
                refs_hi: 512,
            },
            Reply::Frames { frames: vec![4, 5] },
            Reply::Mapped {
                handle: 3,
                frames: vec![4],
            },
            Reply::Statuses {
                statuses: vec![0, -3],
            },
            Reply::Port { port: 9 },
            Reply::NotifyId { id: 2 },
            Reply::Report(HostReport {
                free_frames: 10,
                orphan_frames: 1,
                domains: vec![DomainReport {
                    domid: 1,
                    state: DomainState::Dying,
                    persistent: true,
                    sessions: 9,
                    frames_owned: 2,
                    grants_valid: 3,
                    grants_mapped_by_peers: 4,
                    mappings: 5,
                    mapped_pages: 6,
                    ports: 7,
                    notifies: 8,
                }],
                xenstore: vec!["xenstore: /local/domain/3 (1 nodes)".into()],
            }),
            Reply::Path {
                path: "/run/x/1.sock".into(),
            },
            Reply::Chunk { lo: 512, hi: 1024 },
        ];
        for r in reps {
            assert_eq!(Reply::decode(&r.encode()).unwrap(), r);
        }
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        assert!(Request::decode(&[]).is_err());
        assert!(Request::decode(&[99]).is_err());
        assert!(
            Request::decode(&[4, 1, 0, 1, 0xff, 0xff, 0xff, 0xff]).is_err(),
            "huge count"
        );
        assert!(Request::decode(&[0, 1, 0, 0]).is_err(), "trailing byte");
        assert!(Reply::decode(&[1, 0]).is_err());
    }
}
