//! Accepting connections: every shard listens on the Kafka port with SO_REUSEPORT
//! (glommio sets it), so the kernel spreads connections over the cores.

use std::net::SocketAddr;
use std::rc::Rc;

use glommio::net::TcpListener;

use crate::shard::Shard;

/// Refuses a port another socket already listens on. glommio binds with SO_REUSEPORT,
/// which would let a second broker (same user) bind it too and silently split the
/// connections between the two. A probe bind cannot tell that apart from connections
/// a killed broker left behind on the port (they make a plain bind fail too), so this
/// looks for a socket in LISTEN state on the port in /proc/net/tcp{,6}, for a few
/// seconds. Port 0 needs no check; without /proc nothing is refused.
pub fn ensure_port_free(addr: SocketAddr) -> Result<(), String> {
    if addr.port() == 0 {
        return Ok(());
    }
    let listening = || {
        ["/proc/net/tcp", "/proc/net/tcp6"]
            .iter()
            .filter_map(|f| std::fs::read_to_string(f).ok())
            .any(|table| listens_on(&table, addr))
    };
    // A killed broker's listening socket outlives it until the kernel tears down its
    // io_uring (asynchronously, usually within milliseconds); binding next to it would
    // put a socket nobody accepts on into the SO_REUSEPORT group. So wait for it to go;
    // a live broker's socket stays, and is refused.
    let deadline = std::time::Instant::now() + PORT_RELEASE_WAIT;
    let mut said = false;
    while listening() {
        if std::time::Instant::now() >= deadline {
            return Err(format!(
                "cannot listen on {addr}: the port is already in use by another process \
             listening on it (another broker?); stop it or choose another port",
            ));
        }
        if !said {
            tracing::info!(%addr, "port still has a listener; waiting for it to be released");
            said = true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(())
}

/// How long a port may stay held by a listener before startup is refused.
const PORT_RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether a /proc/net/tcp{,6} table has a LISTEN socket on `addr`'s port whose
/// address overlaps `addr` (the same address, or either side a wildcard).
fn listens_on(table: &str, addr: SocketAddr) -> bool {
    const TCP_LISTEN: &str = "0A";
    table.lines().skip(1).any(|line| {
        let mut f = line.split_whitespace();
        let (Some(local), Some(_remote), Some(state)) = (f.nth(1), f.next(), f.next()) else {
            return false;
        };
        let Some((ip_hex, port_hex)) = local.split_once(':') else {
            return false;
        };
        if state != TCP_LISTEN || u16::from_str_radix(port_hex, 16).ok() != Some(addr.port()) {
            return false;
        }
        // Addresses are the kernel's in-memory words: all zeros is the wildcard.
        let wildcard = ip_hex.bytes().all(|b| b == b'0');
        if wildcard || addr.ip().is_unspecified() {
            return true;
        }
        match addr.ip() {
            std::net::IpAddr::V4(v4) if ip_hex.len() == 8 => {
                u32::from_str_radix(ip_hex, 16).ok() == Some(u32::from_ne_bytes(v4.octets()))
            }
            // An IPv6 socket (v4-mapped or not) on the port: treat as overlapping.
            _ => ip_hex.len() == 32,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::listens_on;

    const TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:2384 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 0100007F:2384 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:1F91 0100007F:D2F1 08 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 20 4 30 10 -1
";

    #[test]
    fn only_a_listening_socket_on_the_port_counts() {
        // 0x2384 = 9092 listening on 127.0.0.1.
        assert!(listens_on(TABLE, "127.0.0.1:9092".parse().unwrap()));
        assert!(listens_on(TABLE, "0.0.0.0:9092".parse().unwrap()));
        assert!(!listens_on(TABLE, "127.0.0.2:9092".parse().unwrap()));
        // 0x1F91 = 8081: only a connection a killed broker left (CLOSE_WAIT), no listener.
        assert!(!listens_on(TABLE, "127.0.0.1:8081".parse().unwrap()));
    }
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
                tracing::warn!(error = %e, "accept failed");
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        if shard.metrics.connections.get() >= per_shard_max {
            tracing::warn!(
                max = shard.config.connections_max,
                "refusing connection: connections max reached"
            );
            drop(stream);
            continue;
        }
        glommio::spawn_local(super::connection::handle(shard.clone(), stream)).detach();
    }
}
