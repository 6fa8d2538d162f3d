//! One channel's unread data: [`RxQueue`], and the bound on the memory it
//! keeps allocated ([`RX_MEMORY_OVERHEAD`] beyond the unread bytes).
//!
//! A DATA payload arrives as a zero-copy slice of the driver's read buffer
//! (an allocation of [`READ_BUFFER`] bytes shared by every frame read into
//! it). Kept as it is, one unread byte would keep the whole allocation
//! alive: a peer interleaving single bytes on a channel nobody reads with
//! large payloads on a busy one would pin a read buffer per unread byte.
//! So a payload is kept zero-copy only when it is large
//! ([`ZERO_COPY_MIN`] bytes or more) and the channel holds fewer than
//! [`MAX_SHARED`] such slices; every other payload is copied into the
//! channel's own chunks of [`RX_CHUNK`] bytes, filled end to end, small
//! payloads together (no allocation per payload).
//!
//! # The bound
//!
//! With `U` unread bytes a channel keeps at most `U + RX_MEMORY_OVERHEAD`
//! bytes allocated ([`RxQueue::held`] counts them, charging each zero-copy
//! slice its whole read buffer):
//!
//! * at most [`MAX_SHARED`] zero-copy slices, each charged [`READ_BUFFER`];
//! * copy chunks are filled completely before the next one starts, except
//!   one closed early because a zero-copy slice came after it (at most one
//!   per slice held) and the open last chunk; only the first chunk can
//!   hold bytes already read (data is read in order): at most
//!   `2 + MAX_SHARED` chunks of [`RX_CHUNK`] with room not taken by unread
//!   bytes.
//!
//! Unread bytes are at most the window the channel granted, so a channel
//! holds at most `window + RX_MEMORY_OVERHEAD` bytes (with the default
//! 256 KiB window: about 544 KiB), whatever the peer sends.

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::ReadBuf;

use super::frame::{HEADER_SIZE, MAX_PAYLOAD};

/// Bytes the driver asks of the stream per read (at least a quarter of it
/// is free before each read).
pub(super) const READ_CHUNK: usize = 64 * 1024;
/// The size of every read buffer allocation of the driver: room for the
/// part of a frame left over from the last read, and a whole read.
pub(super) const READ_BUFFER: usize = READ_CHUNK + HEADER_SIZE + MAX_PAYLOAD;
/// The size of a channel's copy chunks.
pub const RX_CHUNK: usize = 8 * 1024;
/// Payloads at least this long may stay zero-copy.
pub const ZERO_COPY_MIN: usize = RX_CHUNK;
/// Zero-copy slices a channel may hold at once.
pub const MAX_SHARED: usize = 2;
/// Memory a channel may keep allocated beyond its unread bytes (see the
/// module documentation): about 288 KiB.
pub const RX_MEMORY_OVERHEAD: usize = MAX_SHARED * (READ_BUFFER + RX_CHUNK) + 2 * RX_CHUNK;

/// A frozen piece of unread data.
#[derive(Debug)]
struct Piece {
    bytes: Bytes,
    /// The allocation it keeps alive (an upper bound for a shared slice).
    charge: usize,
    /// A zero-copy slice of a read buffer.
    shared: bool,
}

/// One channel's unread data, in order: frozen pieces, then the open copy
/// chunk.
#[derive(Debug, Default)]
pub(super) struct RxQueue {
    pieces: VecDeque<Piece>,
    /// The copy chunk being filled; after `pieces` in stream order.
    tail: BytesMut,
    /// The tail's allocation (0: none).
    tail_charge: usize,
    /// Unread bytes.
    len: usize,
    /// Allocated bytes kept alive (pieces' charges and the tail's).
    held: usize,
    /// Shared pieces.
    shared: usize,
}

impl RxQueue {
    /// Unread bytes.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Bytes of memory kept allocated for the unread bytes (at most
    /// `len() + RX_MEMORY_OVERHEAD`).
    pub(super) fn held(&self) -> usize {
        self.held
    }

    /// Appends a DATA payload (a slice of the driver's read buffer).
    pub(super) fn push(&mut self, payload: Bytes) {
        if payload.is_empty() {
            return;
        }
        self.len += payload.len();
        if payload.len() >= ZERO_COPY_MIN && self.shared < MAX_SHARED {
            self.close_tail();
            self.held += READ_BUFFER;
            self.shared += 1;
            self.pieces.push_back(Piece {
                bytes: payload,
                charge: READ_BUFFER,
                shared: true,
            });
            return;
        }
        let mut rest = &payload[..];
        while !rest.is_empty() {
            if self.tail.capacity() == self.tail.len() {
                self.next_chunk();
            }
            let n = rest.len().min(self.tail.capacity() - self.tail.len());
            self.tail.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
        }
    }

    /// Makes room in the tail: its own space again if all of it was read,
    /// else a fresh chunk (the full tail is frozen first).
    fn next_chunk(&mut self) {
        if self.tail_charge > 0 && self.tail.is_empty() && self.tail.try_reclaim(RX_CHUNK) {
            return;
        }
        self.close_tail();
        if self.tail_charge > 0 {
            // An empty tail whose space could not be reclaimed.
            self.held -= self.tail_charge;
        }
        self.tail = BytesMut::with_capacity(RX_CHUNK);
        self.tail_charge = RX_CHUNK;
        self.held += RX_CHUNK;
    }

    /// Freezes a non-empty tail into a piece (its charge goes with it).
    fn close_tail(&mut self) {
        if self.tail.is_empty() {
            return;
        }
        let bytes = std::mem::take(&mut self.tail).freeze();
        self.pieces.push_back(Piece {
            bytes,
            charge: std::mem::take(&mut self.tail_charge),
            shared: false,
        });
    }

    /// Moves unread bytes into `buf`; returns how many.
    pub(super) fn read_into(&mut self, buf: &mut ReadBuf<'_>) -> usize {
        let mut n = 0;
        while buf.remaining() > 0 {
            if let Some(front) = self.pieces.front_mut() {
                let k = front.bytes.len().min(buf.remaining());
                buf.put_slice(&front.bytes[..k]);
                front.bytes.advance(k);
                n += k;
                if front.bytes.is_empty() {
                    if let Some(p) = self.pieces.pop_front() {
                        self.held -= p.charge;
                        self.shared -= usize::from(p.shared);
                    }
                }
            } else if !self.tail.is_empty() {
                let k = self.tail.len().min(buf.remaining());
                buf.put_slice(&self.tail[..k]);
                self.tail.advance(k);
                n += k;
            } else {
                break;
            }
        }
        self.len -= n;
        n
    }

    /// Drops every unread byte and the memory.
    pub(super) fn clear(&mut self) {
        *self = RxQueue::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(q: &mut RxQueue, max: usize) -> Vec<u8> {
        let mut out = vec![0u8; max];
        let mut rb = ReadBuf::new(&mut out);
        q.read_into(&mut rb);
        let n = rb.filled().len();
        out.truncate(n);
        out
    }

    /// A payload as the driver hands it: a slice of a read buffer.
    fn slice(data: &[u8]) -> Bytes {
        let mut b = BytesMut::with_capacity(READ_BUFFER);
        b.extend_from_slice(&[0xee; 100]);
        b.extend_from_slice(data);
        b.extend_from_slice(&[0xee; 100]);
        b.freeze().slice(100..100 + data.len())
    }

    #[test]
    fn bytes_come_out_in_order_whatever_their_path() {
        let mut q = RxQueue::default();
        let mut want = Vec::new();
        let mut k = 0u8;
        for len in [
            1usize,
            3,
            9000,
            2,
            64 << 10,
            5,
            40 << 10,
            20 << 10,
            7,
            8191,
            8192,
        ] {
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    k = k.wrapping_add(1);
                    k
                })
                .collect();
            q.push(slice(&data));
            want.extend_from_slice(&data);
            assert!(q.held() <= q.len() + RX_MEMORY_OVERHEAD);
            assert!(q.shared <= MAX_SHARED);
        }
        let mut got = Vec::new();
        while q.len() > 0 {
            got.extend(read_all(&mut q, 3000));
            assert!(q.held() <= q.len() + RX_MEMORY_OVERHEAD);
        }
        assert!(got == want);
        // Steady state: the emptied chunk is reused, not reallocated.
        let held = q.held();
        for _ in 0..100 {
            q.push(slice(b"ping"));
            assert_eq!(read_all(&mut q, 10), b"ping");
        }
        assert_eq!(q.held(), held);
    }

    /// The attack: single bytes interleaved with large payloads, nothing
    /// read; then reading a little at a time, more arriving.
    #[test]
    fn memory_stays_within_unread_bytes_plus_the_overhead() {
        let mut q = RxQueue::default();
        for i in 0..2000 {
            q.push(slice(&[i as u8]));
            if i % 7 == 0 {
                q.push(slice(&vec![1u8; ZERO_COPY_MIN + i % 5000]));
            }
            assert!(
                q.held() <= q.len() + RX_MEMORY_OVERHEAD,
                "held {} for {} unread",
                q.held(),
                q.len()
            );
        }
        for i in 0..3000 {
            read_all(&mut q, 1 + i % 40_000);
            q.push(slice(&vec![2u8; 1 + (i * 7919) % MAX_PAYLOAD]));
            assert!(q.held() <= q.len() + RX_MEMORY_OVERHEAD);
        }
        q.clear();
        assert_eq!((q.len(), q.held()), (0, 0));
    }
}
