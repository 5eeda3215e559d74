//! The broker-wide bound on request and response buffers (`queued.max.request.bytes`).
//!
//! Per-connection bounds (`connection::CONNECTION_BUFFERED_BYTES_MAX`) do not bound the
//! broker: sixteen clients that each pin a few large Fetch responses by never reading
//! them add up to gigabytes. So every shard owns an equal share of one budget, a plain
//! counter on its own thread (no lock or atomic across cores: a connection, its
//! requests and its responses all live on the shard that accepted it).
//!
//! What counts, on the connection's shard: a request's frame from when it is read until
//! its handler is done, and its response from when it exists until it is written.
//! Backpressure, in two places:
//! - a connection does not start reading a new request while its shard's share is
//!   spent (`wait_room`); TCP flow control then pushes back on the client. A request
//!   whose reading had begun is finished, so the share can be exceeded by the frames
//!   in flight (each bounded by `socket.request.max.bytes`).
//! - a Fetch sizes its response from what is free (`reserve_fetch`): at most half of
//!   what responses may still take, so fetchers that never read shrink what each next
//!   one gets instead of using the whole share. Responses may fill only
//!   `RESPONSE_SHARE` of it: the rest stays for reading requests, so clients that pin
//!   responses cannot stop the broker from reading everyone else's. Kafka's rule that
//!   a fetch returns at least one batch (KIP-74) holds: a response larger than its
//!   reservation is sent once it fits, or at once when nothing else is held.
//!
//! Bytes still being read off the socket (a partial frame) are bounded per connection
//! by the frame size and the frame read timeout, not here: charging them would let
//! connections that announce large frames and send nothing block everyone.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Instant;

use futures::channel::oneshot;

/// Responses may use this fraction (numerator / denominator) of a shard's share.
const RESPONSE_SHARE: (usize, usize) = (3, 4);

/// One shard's share of the budget.
pub struct MemoryBudget {
    limit_bytes: usize,
    used_bytes: Cell<usize>,
    /// Tasks waiting for room; all are woken when usage falls, and re-check.
    waiters: RefCell<Vec<oneshot::Sender<()>>>,
    /// Summed over connections: time spent not reading because the share was spent.
    paused_ns: Cell<u64>,
    /// Fetch responses sized below what the client asked for, for lack of room.
    fetches_clamped: Cell<u64>,
}

impl MemoryBudget {
    /// This shard's budget (installed on every shard when the broker starts).
    pub fn of(shard: &crate::shard::Shard) -> Rc<MemoryBudget> {
        shard
            .services
            .get::<MemoryBudget>()
            .expect("the broker installs a memory budget on every shard")
    }

    /// `limit_bytes`: this shard's share; `usize::MAX` for no bound.
    pub fn new(limit_bytes: usize) -> Self {
        assert!(limit_bytes > 0, "a zero budget could never admit a request");
        MemoryBudget {
            limit_bytes,
            used_bytes: Cell::new(0),
            waiters: RefCell::default(),
            paused_ns: Cell::new(0),
            fetches_clamped: Cell::new(0),
        }
    }

    pub fn limit_bytes(&self) -> usize {
        self.limit_bytes
    }

    pub fn used_bytes(&self) -> usize {
        self.used_bytes.get()
    }

    pub fn paused_ns(&self) -> u64 {
        self.paused_ns.get()
    }

    pub fn fetches_clamped(&self) -> u64 {
        self.fetches_clamped.get()
    }

    /// What responses may fill (see `RESPONSE_SHARE`).
    fn response_limit_bytes(&self) -> usize {
        self.limit_bytes / RESPONSE_SHARE.1 * RESPONSE_SHARE.0
    }

    /// Charges `n` bytes until the returned guard is dropped.
    pub fn hold(self: &Rc<Self>, n: usize) -> Reservation {
        self.charge(n);
        Reservation {
            budget: self.clone(),
            bytes: n,
        }
    }

    pub fn charge(&self, n: usize) {
        self.used_bytes.set(self.used_bytes.get().saturating_add(n));
    }

    pub fn release(&self, n: usize) {
        let used = self.used_bytes.get();
        assert!(n <= used, "released {n} bytes of {used} charged");
        self.used_bytes.set(used - n);
        if n > 0 && self.used_bytes.get() < self.limit_bytes {
            for w in self.waiters.borrow_mut().drain(..) {
                let _ = w.send(());
            }
        }
    }

    /// Resolves on the next release that leaves room.
    async fn next_release(&self) {
        let (tx, rx) = oneshot::channel();
        self.waiters.borrow_mut().push(tx);
        let _ = rx.await;
    }

    /// Waits while the share is spent (a connection, before reading a new request).
    pub async fn wait_room(&self) {
        if self.used_bytes.get() < self.limit_bytes {
            return;
        }
        let paused = Instant::now();
        while self.used_bytes.get() >= self.limit_bytes {
            self.next_release().await;
        }
        let ns = u64::try_from(paused.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.paused_ns.set(self.paused_ns.get().saturating_add(ns));
    }

    /// Reserves room for reading a Fetch response of up to `want_bytes`: half of what
    /// responses may still take (at least 1 byte, which still reads one batch).
    pub fn reserve_fetch(self: &Rc<Self>, want_bytes: usize) -> Reservation {
        let free = self
            .response_limit_bytes()
            .saturating_sub(self.used_bytes.get());
        let grant = want_bytes.min((free / 2).max(1));
        if grant < want_bytes {
            self.fetches_clamped.set(self.fetches_clamped.get() + 1);
        }
        self.hold(grant)
    }

    /// Whether a response of `bytes` may be kept, with `reserved` of it already
    /// charged: it fits in what responses may take, or nothing else is held (so a
    /// batch larger than the whole share still goes out, alone).
    pub fn fits(&self, reserved: usize, bytes: usize) -> bool {
        let others = self.used_bytes.get().saturating_sub(reserved);
        others == 0 || others.saturating_add(bytes) <= self.response_limit_bytes()
    }

    /// Waits until a response of `bytes` would fit (see `fits`), with nothing of it
    /// reserved.
    pub async fn wait_fits(&self, bytes: usize) {
        while !self.fits(0, bytes) {
            self.next_release().await;
        }
    }
}

/// Bytes reserved in a shard's budget, released on drop.
pub struct Reservation {
    budget: Rc<MemoryBudget>,
    bytes: usize,
}

impl Reservation {
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a test body on its own executor (io_memory below RLIMIT_MEMLOCK).
    fn run<F, Fut>(f: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + 'static,
    {
        glommio::LocalExecutorBuilder::default()
            .io_memory(2 << 20)
            .spawn(f)
            .expect("executor")
            .join()
            .expect("join");
    }

    #[test]
    fn fetch_reservations_take_half_of_what_is_free_so_the_share_is_never_used_up() {
        run(|| async {
            let b = Rc::new(MemoryBudget::new(64 << 20));
            let mut held = Vec::new();
            for _ in 0..40 {
                held.push(b.reserve_fetch(55 << 20));
            }
            assert_eq!(held[0].bytes(), 24 << 20);
            assert_eq!(held[1].bytes(), 12 << 20);
            assert!(held.iter().all(|r| r.bytes() >= 1));
            // A quarter of the share stays for reading requests.
            assert!(b.used_bytes() <= (48 << 20) + 40);
            assert_eq!(b.fetches_clamped(), 40);
            drop(held);
            assert_eq!(b.used_bytes(), 0);
        });
    }

    #[test]
    fn a_spent_share_pauses_until_released() {
        run(|| async {
            let b = Rc::new(MemoryBudget::new(1000));
            b.charge(1000);
            let b2 = b.clone();
            let waiter = glommio::spawn_local(async move {
                b2.wait_room().await;
                b2.used_bytes()
            });
            glommio::timer::sleep(std::time::Duration::from_millis(20)).await;
            b.release(600);
            assert_eq!(waiter.await, 400);
            assert!(b.paused_ns() >= 10_000_000);
        });
    }

    #[test]
    fn a_response_larger_than_the_share_goes_out_alone() {
        let b = MemoryBudget::new(1000);
        assert!(b.fits(0, 5000), "an unused share takes one oversized batch");
        b.charge(10);
        assert!(!b.fits(0, 5000));
        assert!(b.fits(10, 5000), "its own reservation does not count");
        // Responses fill at most three quarters.
        assert!(b.fits(0, 740));
        assert!(!b.fits(0, 741));
    }
}
