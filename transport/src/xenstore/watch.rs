//! Watch streams. Watches live on the client's own connection
//! ([`XsConn`](super::conn::XsConn)), whose death the client notices at
//! once (it then reconnects and sets every watch again); its reader hands
//! each watch's events to that watch's bounded queue without ever waiting,
//! so a consumer that does not read can never stall the connection every
//! other call shares (a lagging consumer sees events coalesced into one for
//! the watched path).

use std::pin::Pin;
use std::sync::Weak;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::mpsc;

use super::client::Inner;

/// A registered watch: its path, its token and its queue.
pub(super) struct WatchReg {
    pub(super) path: String,
    pub(super) token: String,
    pub(super) out: mpsc::Sender<String>,
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
            let reg = inner.watches.lock().expect("watches lock").remove(&self.id);
            if let Some(reg) = reg {
                inner.unwatch(reg);
            }
        }
    }
}
