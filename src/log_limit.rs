//! Rate limits for warnings a client or the host can trigger at will (bad frames,
//! refused connections, stalls): a flood of them must not fill the disk or cost the
//! shard its time. Counters are per thread, so per shard, and never shared.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Lines one call site may log per window on one shard.
pub const LINES_PER_WINDOW: u32 = 5;
pub const WINDOW: Duration = Duration::from_secs(60);

#[derive(Clone, Copy)]
struct Site {
    window_start: Instant,
    logged: u32,
    suppressed: u64,
}

thread_local! {
    static SITES: RefCell<HashMap<&'static str, Site>> = RefCell::new(HashMap::new());
}

/// Whether the call site `site` may log now. `Some(n)`: yes, and `n` lines of it were
/// suppressed since it last logged (to be reported in this line).
pub fn admit(site: &'static str) -> Option<u64> {
    admit_at(site, Instant::now())
}

fn admit_at(site: &'static str, now: Instant) -> Option<u64> {
    SITES.with(|sites| {
        let mut sites = sites.borrow_mut();
        let s = sites.entry(site).or_insert(Site {
            window_start: now,
            logged: 0,
            suppressed: 0,
        });
        if now.duration_since(s.window_start) >= WINDOW {
            s.window_start = now;
            s.logged = 0;
        }
        if s.logged >= LINES_PER_WINDOW {
            s.suppressed += 1;
            return None;
        }
        s.logged += 1;
        Some(std::mem::take(&mut s.suppressed))
    })
}

/// `tracing::warn!` limited per call site and shard (see `admit`); a line that follows
/// suppressed ones carries their count as `suppressed`.
#[macro_export]
macro_rules! warn_limited {
    ($($arg:tt)+) => {
        if let Some(suppressed) = $crate::log_limit::admit(concat!(file!(), ":", line!())) {
            tracing::warn!(suppressed, $($arg)+);
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_site_logs_a_few_lines_per_window_then_reports_what_it_suppressed() {
        let t0 = Instant::now();
        for _ in 0..LINES_PER_WINDOW {
            assert_eq!(admit_at("test-site", t0), Some(0));
        }
        for _ in 0..100 {
            assert_eq!(admit_at("test-site", t0 + Duration::from_secs(1)), None);
        }
        // Another site is counted on its own.
        assert_eq!(admit_at("other-site", t0), Some(0));
        assert_eq!(admit_at("test-site", t0 + WINDOW), Some(100));
        assert_eq!(admit_at("test-site", t0 + WINDOW), Some(0));
    }
}
