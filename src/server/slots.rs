//! Connection slots: the limit on concurrent connections of one listener,
//! and the pressure signal that asks idle connections to make room when a new
//! client waits (see the parent module's documentation for the rules).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

pub(super) struct Conn {
    pub(super) stream: TcpStream,
    pub(super) peer: SocketAddr,
    pub(super) permit: OwnedSemaphorePermit,
    /// Changes when a new client waits for a slot.
    pub(super) pressure: watch::Receiver<u64>,
}

/// A connection accepted at least this long ago with no request in flight
/// is closed when every slot is taken and a new client waits (as nginx
/// reuses idle keep-alive connections): idle sockets can delay a new client
/// by about this much, never lock it out. A real client's first request
/// arrives with its connection, long before this.
pub const EVICTION_MIN_AGE: Duration = Duration::from_millis(250);
/// While a new client waits for a slot, idle connections are asked again
/// this often.
const EVICTION_RETRY: Duration = Duration::from_millis(100);

/// The connection slots of one listener.
pub(super) struct Slots {
    limit: Arc<Semaphore>,
    pub(super) pressure: watch::Sender<u64>,
}

impl Slots {
    pub(super) fn new(max_connections: usize) -> Self {
        Slots {
            limit: Arc::new(Semaphore::new(max_connections.max(1))),
            pressure: watch::Sender::new(0),
        }
    }

    /// Accept, then take a slot; when none is free, ask idle connections to
    /// make room until one is. `None` on an accept error (after a short
    /// back-off: EMFILE and friends must not spin).
    pub(super) async fn accept(&self, listener: &TcpListener) -> Option<Conn> {
        let (stream, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                return None;
            }
        };
        let permit = match self.limit.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => loop {
                self.pressure.send_modify(|n| *n = n.wrapping_add(1));
                tokio::select! {
                    p = self.limit.clone().acquire_owned() => break p.ok()?,
                    () = tokio::time::sleep(EVICTION_RETRY) => {}
                }
            },
        };
        Some(Conn {
            stream,
            peer,
            permit,
            pressure: self.pressure.subscribe(),
        })
    }
}
