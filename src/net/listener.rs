//! Accepting connections: every shard listens on the Kafka port with SO_REUSEPORT
//! (glommio sets it), so the kernel spreads connections over the cores.

use std::net::SocketAddr;
use std::rc::Rc;

use crate::shard::Shard;

/// Binds this shard's listener to `addr` and keeps it on the shard until `serve`.
pub fn bind(shard: &Shard, addr: SocketAddr) -> Result<SocketAddr, String> {
    let listener =
        crate::ports::bind_reuseport(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
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
