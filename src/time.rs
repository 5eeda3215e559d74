//! Clocks and timeouts every layer uses.

use std::future::Future;
use std::time::Duration;

/// Wall-clock milliseconds since the Unix epoch, as Kafka timestamps count them; 0 if
/// the clock is set before 1970.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `Some(output)` unless `timeout` passes first (on the shard's timer).
pub async fn with_timeout<T>(timeout: Duration, f: impl Future<Output = T>) -> Option<T> {
    let sleep = std::pin::pin!(glommio::timer::sleep(timeout));
    let f = std::pin::pin!(f);
    match futures::future::select(f, sleep).await {
        futures::future::Either::Left((v, _)) => Some(v),
        futures::future::Either::Right(_) => None,
    }
}
