//! Transactions over the project's own connection, with retry on EAGAIN.

use super::client::XsClient;
use super::codec::{XsErrno, XsType};
use super::error::{absent_as_none, check_path, check_payload, XsError};

/// An open transaction; see [`XsClient::transaction`]. Dropping it without
/// committing leaves the server to discard it when the connection closes;
/// call [`XsTxn::abort`] to end it at once.
#[derive(Debug)]
pub struct XsTxn {
    client: XsClient,
    id: u32,
    /// Held while the transaction is open (see
    /// [`ClientOptions::max_transactions`](super::ClientOptions::max_transactions)).
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl XsTxn {
    /// The transaction id.
    pub fn id(&self) -> u32 {
        self.id
    }

    async fn req(
        &self,
        op: &'static str,
        path: &str,
        ty: XsType,
        parts: &[&[u8]],
        nul: bool,
    ) -> Result<Vec<u8>, XsError> {
        let m = XsClient::build(op, path, ty, self.id, parts, nul)?;
        Ok(self.client.raw(op, path, m).await?.payload)
    }

    /// Reads a node as this transaction sees it.
    pub async fn read(&self, path: &str) -> Result<String, XsError> {
        check_path("read", path)?;
        let p = self
            .req("read", path, XsType::Read, &[path.as_bytes()], true)
            .await?;
        Ok(String::from_utf8_lossy(&p).into_owned())
    }

    /// Reads a node; `None` if absent.
    pub async fn read_opt(&self, path: &str) -> Result<Option<String>, XsError> {
        absent_as_none(self.read(path).await)
    }

    /// Writes a node in this transaction.
    pub async fn write(&self, path: &str, value: &str) -> Result<(), XsError> {
        check_path("write", path)?;
        check_payload("write", path, path.len() + 1 + value.len())?;
        self.req(
            "write",
            path,
            XsType::Write,
            &[path.as_bytes(), value.as_bytes()],
            false,
        )
        .await
        .map(|_| ())
    }

    /// Lists children in this transaction.
    pub async fn directory(&self, path: &str) -> Result<Vec<String>, XsError> {
        check_path("directory", path)?;
        let p = self
            .req(
                "directory",
                path,
                XsType::Directory,
                &[path.as_bytes()],
                true,
            )
            .await?;
        Ok(super::codec::split_nul(&p)
            .iter()
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect())
    }

    /// Creates a node in this transaction.
    pub async fn mkdir(&self, path: &str) -> Result<(), XsError> {
        check_path("mkdir", path)?;
        self.req("mkdir", path, XsType::Mkdir, &[path.as_bytes()], true)
            .await
            .map(|_| ())
    }

    /// Removes a node in this transaction.
    pub async fn rm(&self, path: &str) -> Result<(), XsError> {
        check_path("rm", path)?;
        self.req("rm", path, XsType::Rm, &[path.as_bytes()], true)
            .await
            .map(|_| ())
    }

    async fn end(self, commit: bool) -> Result<(), XsError> {
        let arg: &[u8] = if commit { b"T" } else { b"F" };
        let what = format!("transaction {}", self.id);
        let m = XsClient::build(
            "transaction-end",
            &what,
            XsType::TransactionEnd,
            self.id,
            &[arg],
            true,
        )?;
        self.client
            .raw("transaction-end", &what, m)
            .await
            .map(|_| ())
    }

    /// Commits; a conflict is `XsError::Server { errno: EAGAIN, .. }`.
    pub async fn commit(self) -> Result<(), XsError> {
        self.end(true).await
    }

    /// Discards the transaction.
    pub async fn abort(self) -> Result<(), XsError> {
        self.end(false).await
    }
}

/// A random pause after the `attempt`th conflict, in `[0, window)`: the
/// window is `unit * 2^attempt`, capped at `256 * unit` and at one second,
/// where `unit` is how long the conflicting attempt took (at least 1 ms).
/// Contenders spread over a window that grows with each conflict and with
/// the server's speed, so that on a slow server (oxenstored under software
/// emulation: tens of milliseconds per transaction) they still stop
/// colliding within a few attempts.
fn backoff(attempt: u32, took: std::time::Duration) -> std::time::Duration {
    use std::hash::{BuildHasher, Hasher};
    let unit_us = (took.as_micros() as u64).max(1000);
    let window_us = (unit_us << attempt.min(8)).min(1_000_000);
    // RandomState is seeded randomly per instance: a cheap source of jitter.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(attempt);
    std::time::Duration::from_micros(h.finish() % window_us)
}

impl XsClient {
    /// Starts a transaction (waiting first while this client already has
    /// its most transactions open).
    pub async fn begin(&self) -> Result<XsTxn, XsError> {
        let slot = self
            .inner
            .txn_slots
            .clone()
            .acquire_owned()
            .await
            .expect("the transaction semaphore is never closed");
        let m = XsClient::build(
            "transaction-start",
            "",
            XsType::TransactionStart,
            0,
            &[b""],
            true,
        )?;
        let reply = self.raw("transaction-start", "", m).await?;
        let text = String::from_utf8_lossy(reply.parts().first().copied().unwrap_or_default())
            .into_owned();
        let id = text.trim().parse().map_err(|_| XsError::Invalid {
            op: "transaction-start",
            path: String::new(),
            why: format!("server sent a bad transaction id {text:?}"),
        })?;
        Ok(XsTxn {
            client: self.clone(),
            id,
            _slot: slot,
        })
    }

    /// Runs `body` in a transaction and commits, starting again from scratch
    /// after a random, growing pause (scaled by how long an attempt takes)
    /// while the commit answers EAGAIN, up to the configured attempts. An error from `body` aborts the transaction
    /// and is returned.
    pub async fn transaction<T>(
        &self,
        mut body: impl AsyncFnMut(&XsTxn) -> Result<T, XsError>,
    ) -> Result<T, XsError> {
        let attempts = self.options().transaction_attempts;
        for attempt in 0..attempts {
            let started = std::time::Instant::now();
            let tx = self.begin().await?;
            let value = match body(&tx).await {
                Ok(v) => v,
                Err(e) => {
                    let _ = tx.abort().await;
                    return Err(e);
                }
            };
            match tx.commit().await {
                Ok(()) => return Ok(value),
                Err(e) if e.errno() == Some(XsErrno::Eagain) => {
                    // Back off for a random time that grows with each
                    // conflict, so that contending writers stop colliding.
                    tokio::time::sleep(backoff(attempt, started.elapsed())).await;
                }
                Err(e) => return Err(e),
            }
        }
        Err(XsError::Conflict { attempts })
    }
}

#[cfg(test)]
mod tests {
    use super::backoff;
    use std::time::Duration;

    #[test]
    fn the_backoff_window_grows_with_conflicts_and_with_the_servers_speed() {
        let max = |attempt, took| {
            (0..200)
                .map(|_| backoff(attempt, took))
                .max()
                .expect("200 samples")
        };
        // A fast server: windows of 1, 2, 4 ms ...
        assert!(max(0, Duration::from_micros(50)) < Duration::from_millis(1));
        assert!(max(3, Duration::from_micros(50)) < Duration::from_millis(8));
        assert!(max(3, Duration::from_micros(50)) > Duration::from_millis(2));
        // A slow one (40 ms per attempt): the window starts at 40 ms.
        assert!(max(0, Duration::from_millis(40)) > Duration::from_millis(10));
        // Capped at one second.
        assert!(max(30, Duration::from_secs(3)) < Duration::from_secs(1));
        assert!(max(30, Duration::from_secs(3)) > Duration::from_millis(500));
    }
}
