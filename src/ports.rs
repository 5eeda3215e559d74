//! Binding listening sockets exclusively, for every layer that listens (the Kafka,
//! admin and cluster listeners): a port another process listens on is refused, never
//! shared.

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::time::{Duration, Instant};

use glommio::net::TcpListener;

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

/// Binds one of the Kafka listener's SO_REUSEPORT group (one socket per shard), with
/// SO_REUSEADDR too: the connections it accepts inherit it, so the ones a killed broker
/// leaves behind (FIN_WAIT, TIME_WAIT) do not block the next broker's exclusive bind.
pub fn bind_reuseport(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    // SAFETY: a bound, listening TCP socket whose ownership moves into the listener.
    Ok(unsafe { TcpListener::from_raw_fd(socket.into_raw_fd()) })
}

/// Connections a listener queues before accepting them (glommio's own choice).
const LISTEN_BACKLOG: i32 = 1024;
