//! A switch between the local runtime and its embedded DynamoDB engine, for outage tests: a TCP
//! relay in front of the engine's loopback port that, while the gate is down, cuts every open
//! connection and refuses new ones. The runtime's one `aws-sdk-dynamodb` adapter then meets what
//! it would meet in a real outage (connection failures → `StoreError::Unavailable` after the
//! SDK's own retries), with no test-only branch in the adapter. Only runtimes started with
//! `Options::store_gate` have it.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Clone)]
pub struct StoreGate {
    down: watch::Sender<bool>,
}

impl Default for StoreGate {
    fn default() -> Self {
        StoreGate {
            down: watch::channel(false).0,
        }
    }
}

impl StoreGate {
    /// Store unavailable (`true`) or back (`false`).
    pub fn set_down(&self, down: bool) {
        self.down.send_replace(down);
        tracing::warn!(down, "store gate switched");
    }

    pub fn is_down(&self) -> bool {
        *self.down.borrow()
    }

    /// Relays `listener` to `upstream` until `stop`.
    pub fn spawn(
        &self,
        listener: TcpListener,
        upstream: SocketAddr,
        mut stop: watch::Receiver<bool>,
    ) {
        let gate = self.down.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = stop.wait_for(|s| *s) => return,
                };
                let Ok((mut client, _)) = accepted else {
                    continue;
                };
                if *gate.borrow() {
                    continue; // dropped: the connection is refused
                }
                let mut down = gate.subscribe();
                tokio::spawn(async move {
                    let Ok(mut engine) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut engine) => {}
                        _ = down.wait_for(|d| *d) => {} // outage: cut the connection
                    }
                });
            }
        });
    }
}
