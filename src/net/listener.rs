//! Accepting connections: every shard listens on the Kafka port with SO_REUSEPORT
//! (glommio sets it), so the kernel spreads connections over the cores.

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::net::TcpListener;

use crate::shard::Shard;

/// How long a port may stay held by a listener before startup is refused: a killed
/// broker's listening socket outlives it until the kernel tears down its io_uring
/// (asynchronously, usually within milliseconds).
const PORT_RELEASE_WAIT: Duration = Duration::from_secs(5);
const PORT_RETRY_INTERVAL: Duration = Duration::from_millis(20);

/// Binds `addr` with a plain listening socket: no SO_REUSEPORT, so a port that any
/// other socket listens on (a second broker, SO_REUSEPORT or not) is refused instead of
/// shared. A port still held waits, without blocking the shard, up to
/// `PORT_RELEASE_WAIT` for a killed broker's socket to go; a live one's stays, and is
/// refused then.
pub async fn bind_exclusive(addr: SocketAddr) -> Result<std::net::TcpListener, String> {
    let deadline = Instant::now() + PORT_RELEASE_WAIT;
    let mut said = false;
    loop {
        match std::net::TcpListener::bind(addr) {
            Ok(l) => return Ok(l),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                if !said {
                    tracing::info!(%addr, "port still has a listener; waiting for it to be released");
                    said = true;
                }
                glommio::timer::sleep(PORT_RETRY_INTERVAL).await;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                return Err(format!(
                    "cannot listen on {addr}: the port is already in use by another process \
                     listening on it (another broker?); stop it or choose another port"
                ))
            }
            Err(e) => return Err(format!("cannot listen on {addr}: {e}")),
        }
    }
}

/// `bind_exclusive` for a listener only this shard accepts on (admin, cluster).
pub async fn bind_exclusive_local(addr: SocketAddr) -> Result<TcpListener, String> {
    let std = bind_exclusive(addr).await?;
    // SAFETY: the descriptor is a bound, listening TCP socket whose ownership moves
    // into the glommio listener (into_raw_fd gives it up).
    Ok(unsafe { TcpListener::from_raw_fd(std.into_raw_fd()) })
}

/// Claims the Kafka port for this broker's SO_REUSEPORT group (one listener per shard):
/// an exclusive bind that is released at once, so a port someone else listens on is
/// refused rather than joined. Port 0 needs no claim.
pub async fn claim_port(addr: SocketAddr) -> Result<(), String> {
    if addr.port() == 0 {
        return Ok(());
    }
    bind_exclusive(addr).await.map(drop)
}

/// Binds this shard's listener to `addr` and keeps it on the shard until `serve`.
pub fn bind(shard: &Shard, addr: SocketAddr) -> Result<SocketAddr, String> {
    let listener = TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    *shard.listener.borrow_mut() = Some(listener);
    Ok(local)
}

/// Accepts connections until the listener fails; each connection is a task on this shard.
pub async fn serve(shard: Rc<Shard>) -> anyhow::Result<()> {
    let Some(listener) = shard.listener.borrow_mut().take() else {
        anyhow::bail!("shard {} has no listener", shard.id);
    };
    let per_shard_max = shard.config.connections_max.div_ceil(shard.nshards) as u64;
    let (stop_tx, mut stop) = futures::channel::oneshot::channel::<()>();
    *shard.stop_accepting.borrow_mut() = Some(stop_tx);
    loop {
        let accepted = {
            let accept = std::pin::pin!(listener.accept());
            match futures::future::select(accept, &mut stop).await {
                futures::future::Either::Left((accepted, _)) => Some(accepted),
                futures::future::Either::Right(_) => None,
            }
        };
        let Some(accepted) = accepted else {
            // Graceful stop: close the listening socket, so new connections are refused,
            // and idle here (the caller treats our end as a failure) until the exit.
            drop(listener);
            return futures::future::pending().await;
        };
        let stream = match accepted {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: log and keep serving the connections we have.
                crate::warn_limited!(error = %e, "accept failed");
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        if shard.metrics.connections.get() >= per_shard_max {
            crate::warn_limited!(
                max = shard.config.connections_max,
                "refusing connection: connections max reached"
            );
            drop(stream);
            continue;
        }
        glommio::spawn_local(super::connection::handle(shard.clone(), stream)).detach();
    }
}
