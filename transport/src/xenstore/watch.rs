//! Watch streams: each watch is drained by its own task, so a consumer that
//! does not read can never stall the connection every other call shares.
//!
//! The drain task forwards events into a bounded queue without waiting.
//! When the queue is full it drops the event and remembers that it did; as
//! soon as there is room again it queues one event for the watched path
//! itself ("something at or below here changed"), so a lagging consumer
//! loses detail but never a wakeup.

use std::pin::Pin;
use std::sync::Weak;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use xenstore_rs::tokio::XsTokio;
use xenstore_rs::AsyncWatch;

use super::client::Inner;

/// A registered watch: its path, its queue, and the task draining the
/// current connection's stream into it.
pub(super) struct WatchReg {
    pub(super) path: String,
    pub(super) out: mpsc::Sender<String>,
    pub(super) drain: JoinHandle<()>,
}

/// Spawns the task that sets a watch on `path` through `xs` and moves its
/// events into `out`. The task owns its `XsTokio` handle because
/// xenstore-rs's stream borrows it. `set` reports whether the server
/// accepted the watch.
pub(super) fn spawn_watch(
    xs: XsTokio,
    path: String,
    out: mpsc::Sender<String>,
) -> (JoinHandle<()>, oneshot::Receiver<std::io::Result<()>>) {
    let (set_tx, set_rx) = oneshot::channel();
    let task = tokio::spawn(async move {
        let mut stream = match xs.watch(&path).await {
            Ok(s) => {
                let _ = set_tx.send(Ok(()));
                s
            }
            Err(e) => {
                let _ = set_tx.send(Err(e));
                return;
            }
        };
        let mut lagged = false;
        loop {
            tokio::select! {
                ev = stream.next() => match ev {
                    Some(p) => match out.try_send(String::from(p)) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => lagged = true,
                        Err(mpsc::error::TrySendError::Closed(_)) => return,
                    },
                    // The connection died; the supervisor starts a new task.
                    None => return,
                },
                permit = out.reserve(), if lagged => match permit {
                    Ok(p) => {
                        p.send(path.clone());
                        lagged = false;
                    }
                    Err(_) => return,
                },
            }
        }
    });
    (task, set_rx)
}

/// A stream of changed paths under a watched path; see
/// [`XsClient::watch`](super::XsClient::watch). Dropping it removes the
/// watch.
pub struct XsWatch {
    rx: mpsc::Receiver<String>,
    id: u64,
    client: Weak<Inner>,
}

impl std::fmt::Debug for XsWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XsWatch").field("id", &self.id).finish()
    }
}

impl XsWatch {
    pub(super) fn new(rx: mpsc::Receiver<String>, id: u64, client: Weak<Inner>) -> XsWatch {
        XsWatch { rx, id, client }
    }
}

impl Stream for XsWatch {
    type Item = String;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<String>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for XsWatch {
    fn drop(&mut self) {
        if let Some(inner) = self.client.upgrade() {
            if let Some(reg) = inner.watches.lock().expect("watches lock").remove(&self.id) {
                // Dropping xenstore-rs's stream (inside the task) unwatches.
                reg.drain.abort();
            }
        }
    }
}
