//! A 64-byte message type and an echo backend, for tests, examples and
//! benchmarks: each response carries data derived from its request, so a
//! test can check every answer's content.

use futures::StreamExt;

use super::{AsyncRingError, RingEntry, RingServer, Tagged};

/// A 64-byte ring entry: an id (bytes 0..8, little-endian) and 56 bytes of
/// data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Msg64 {
    /// The id.
    pub id: u64,
    /// The payload.
    pub data: [u8; 56],
}

impl Msg64 {
    /// A request whose payload is derived from `seq`.
    pub fn request(seq: u64) -> Msg64 {
        let mut data = [0u8; 56];
        for (i, chunk) in data.chunks_mut(8).enumerate() {
            chunk.copy_from_slice(&seq.wrapping_mul(i as u64 + 1).to_le_bytes());
        }
        Msg64 { id: 0, data }
    }

    /// The echo backend's answer to `req`: same id, each payload byte
    /// complemented and the first eight bytes reversed, so that a response
    /// cannot be mistaken for its request or for another one's.
    pub fn answer(req: &Msg64) -> Msg64 {
        let mut data = req.data.map(|b| !b);
        data[..8].reverse();
        Msg64 { id: req.id, data }
    }
}

impl RingEntry for Msg64 {
    const SIZE: usize = 64;
    const ALIGN: usize = 8;

    fn decode(bytes: &[u8]) -> Self {
        let mut id = [0u8; 8];
        id.copy_from_slice(&bytes[..8]);
        let mut data = [0u8; 56];
        data.copy_from_slice(&bytes[8..64]);
        Msg64 {
            id: u64::from_le_bytes(id),
            data,
        }
    }

    fn encode(&self, out: &mut [u8]) {
        out[..8].copy_from_slice(&self.id.to_le_bytes());
        out[8..64].copy_from_slice(&self.data);
    }
}

impl Tagged for Msg64 {
    fn id(&self) -> u64 {
        self.id
    }
    fn set_id(&mut self, id: u64) {
        self.id = id;
    }
}

/// Serves `server` with [`Msg64::answer`], answering every batch of
/// requests at hand with one push, until the frontend closes (then
/// `Ok(count)`) or the ring fails.
///
/// Cancellation safety: dropping the future loses no request that was not
/// answered yet only in the sense that they stay on the ring; requests
/// taken into the current batch are answered before any await.
pub async fn serve_echo(mut server: RingServer<Msg64, Msg64>) -> Result<u64, AsyncRingError> {
    let mut count = 0u64;
    let mut batch: Vec<Msg64> = Vec::with_capacity(64);
    while let Some(first) = server.next().await {
        batch.push(Msg64::answer(&first?));
        // Whatever else is ready now goes into the same push.
        while let Some(Some(more)) = futures::FutureExt::now_or_never(server.next()) {
            batch.push(Msg64::answer(&more?));
        }
        server.respond_all(batch.iter())?;
        count += batch.len() as u64;
        batch.clear();
    }
    server.close().await;
    Ok(count)
}
