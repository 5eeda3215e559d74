//! Thread-per-core shards: one pinned glommio executor per core, shared nothing.
//!
//! Each partition is owned by exactly one shard (the table in the metadata image says
//! which). Other shards reach it only through `Shard::invoke_on`, which ships a closure
//! over glommio's channel mesh and ships the result back — Seastar's `invoke_on` — so no
//! lock is ever taken across cores.

pub mod partition;
pub mod producer_state;
pub mod runtime;

use std::any::{Any, TypeId};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use futures::channel::oneshot;
use glommio::channels::channel_mesh::Senders;

use crate::config::BrokerConfig;
use crate::metadata::{Image, MetaLog};
use crate::metrics::{self, Stage, StagedApi};
pub use partition::Partition;

type AnyBox = Box<dyn Any + Send>;
type LocalFut = Pin<Box<dyn Future<Output = AnyBox>>>;
type RemoteCall = Box<dyn FnOnce(Rc<Shard>) -> LocalFut + Send>;

pub enum Envelope {
    Call {
        id: u64,
        from: usize,
        call: RemoteCall,
    },
    Reply {
        id: u64,
        value: AnyBox,
    },
}

pub struct Shard {
    pub id: usize,
    pub nshards: usize,
    pub config: Arc<BrokerConfig>,
    /// This shard's copy of the metadata image; replaced whole on every change.
    pub image: RefCell<Arc<Image>>,
    /// Partitions this shard owns.
    pub partitions: RefCell<HashMap<Arc<str>, HashMap<i32, Rc<Partition>>>>,
    /// Only on shard 0: the metadata log's single writer.
    pub meta_log: Option<RefCell<MetaLog>>,
    /// Serializes metadata changes on shard 0 (held across the broadcast await).
    pub meta_lock: glommio::sync::Semaphore,
    pub metrics: crate::metrics::ShardMetrics,
    /// Set once every shard has opened its logs; listeners wait for it.
    pub ready: Cell<bool>,
    /// This shard's state of the layers above (the metadata quorum, the group
    /// coordinator, the request memory budget), which this layer never names.
    pub services: Services,
    /// This shard's listener between bind and serve.
    pub listener: RefCell<Option<glommio::net::TcpListener>>,
    /// Graceful stop: no new connections or requests (see `runtime`).
    pub stopping: Cell<bool>,
    /// Sockets of this shard's open connections, so a graceful stop can wake the tasks
    /// blocked reading them (`shutdown(SHUT_RD)`).
    pub sockets: RefCell<std::collections::HashSet<std::os::fd::RawFd>>,
    /// Stops this shard's accept loop (graceful stop).
    pub stop_accepting: RefCell<Option<oneshot::Sender<()>>>,
    senders: Senders<Envelope>,
    pending: RefCell<HashMap<u64, oneshot::Sender<AnyBox>>>,
    next_call_id: Cell<u64>,
    next_producer_id: Cell<i64>,
}

/// Per-shard state of the layers above the shard, one value per type: each layer
/// installs its own when the broker starts and finds it again by type (Seastar's
/// `sharded<Service>` turned around: the shard carries them without depending on them).
#[derive(Default)]
pub struct Services(RefCell<HashMap<TypeId, Rc<dyn Any>>>);

impl Services {
    /// Installs this shard's `T`; a second install of one type is a wiring bug.
    pub fn install<T: 'static>(&self, service: Rc<T>) {
        let old = self.0.borrow_mut().insert(TypeId::of::<T>(), service);
        assert!(
            old.is_none(),
            "{} installed twice",
            std::any::type_name::<T>()
        );
    }

    /// This shard's `T`, if installed.
    pub fn get<T: 'static>(&self) -> Option<Rc<T>> {
        let service = self.0.borrow().get(&TypeId::of::<T>())?.clone();
        Some(
            service
                .downcast::<T>()
                .expect("services are keyed by their type"),
        )
    }
}

impl Shard {
    /// Owning shard of a partition per the image's table. A log written by a broker
    /// with more cores than this one folds onto the cores there are.
    pub fn owner_of(&self, owners: &[u32], partition: i32) -> Option<usize> {
        let p = usize::try_from(partition).ok()?;
        owners.get(p).map(|o| *o as usize % self.nshards)
    }

    pub fn image(&self) -> Arc<Image> {
        self.image.borrow().clone()
    }

    pub fn partition(&self, topic: &str, partition: i32) -> Option<Rc<Partition>> {
        self.partitions
            .borrow()
            .get(topic)?
            .get(&partition)
            .cloned()
    }

    /// Runs `f` on shard `target` and returns its result. Local calls run inline.
    pub async fn invoke_on<T, F, Fut>(self: &Rc<Self>, target: usize, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce(Rc<Shard>) -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
    {
        if target == self.id {
            return f(self.clone()).await;
        }
        let id = self.next_call_id.get();
        self.next_call_id.set(id + 1);
        let (tx, rx) = oneshot::channel();
        self.pending.borrow_mut().insert(id, tx);
        let call: RemoteCall =
            Box::new(move |shard| Box::pin(async move { Box::new(f(shard).await) as AnyBox }));
        if self
            .senders
            .send_to(
                target,
                Envelope::Call {
                    id,
                    from: self.id,
                    call,
                },
            )
            .await
            .is_err()
        {
            // The mesh closes only when a shard exits: the process is going down.
            crate::fatal(&format!("shard {} cannot reach shard {target}", self.id));
        }
        let value = match rx.await {
            Ok(v) => v,
            Err(_) => crate::fatal(&format!("shard {target} dropped a call from {}", self.id)),
        };
        match value.downcast::<T>() {
            Ok(v) => *v,
            Err(_) => unreachable!("reply type always matches the call's"),
        }
    }

    /// `invoke_on`, timing the trip to a remote owner as `api`'s cross-shard hop
    /// (recorded on the owner when the call starts running there).
    pub async fn invoke_on_staged<T, F, Fut>(
        self: &Rc<Self>,
        target: usize,
        api: Option<StagedApi>,
        f: F,
    ) -> T
    where
        T: Send + 'static,
        F: FnOnce(Rc<Shard>) -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
    {
        match api {
            Some(api) if target != self.id => {
                let sent = Instant::now();
                self.invoke_on(target, move |s| {
                    metrics::record_stage(api, Stage::Hop, sent.elapsed());
                    f(s)
                })
                .await
            }
            _ => self.invoke_on(target, f).await,
        }
    }

    /// Runs `f` on every shard (this one included) and collects the results in shard order.
    pub async fn invoke_on_all<T, F, Fut>(self: &Rc<Self>, f: F) -> Vec<T>
    where
        T: Send + 'static,
        F: Fn(Rc<Shard>) -> Fut + Send + Clone + 'static,
        Fut: Future<Output = T> + 'static,
    {
        let calls = (0..self.nshards).map(|s| self.invoke_on(s, f.clone()));
        futures::future::join_all(calls).await
    }

    /// Runs `f(partition, input)` on each item's owning shard — one message per shard,
    /// the shard's partitions concurrently — and returns the results in item order
    /// (Redpanda's plan-per-shard). An item is `(owner, topic, partition, input)`;
    /// `None` items, and partitions not open on their owner, give `None`.
    pub async fn on_partitions<T, R, F, Fut>(
        self: &Rc<Self>,
        work: Vec<Option<(usize, String, i32, T)>>,
        f: F,
    ) -> Vec<Option<R>>
    where
        T: Send + 'static,
        R: Send + 'static,
        F: Fn(Rc<Partition>, T) -> Fut + Send + Clone + 'static,
        Fut: Future<Output = R> + 'static,
    {
        self.on_partitions_staged(None, work, f).await
    }

    /// `on_partitions`, timing each hop to a remote owner as `api`'s cross-shard hop.
    pub async fn on_partitions_staged<T, R, F, Fut>(
        self: &Rc<Self>,
        api: Option<StagedApi>,
        work: Vec<Option<(usize, String, i32, T)>>,
        f: F,
    ) -> Vec<Option<R>>
    where
        T: Send + 'static,
        R: Send + 'static,
        F: Fn(Rc<Partition>, T) -> Fut + Send + Clone + 'static,
        Fut: Future<Output = R> + 'static,
    {
        let mut results: Vec<Option<R>> = (0..work.len()).map(|_| None).collect();
        let mut plan: Vec<Vec<(usize, String, i32, T)>> =
            (0..self.nshards).map(|_| Vec::new()).collect();
        for (slot, w) in work.into_iter().enumerate() {
            if let Some((owner, topic, partition, input)) = w {
                plan[owner].push((slot, topic, partition, input));
            }
        }
        let hops = plan
            .into_iter()
            .enumerate()
            .filter(|(_, items)| !items.is_empty())
            .map(|(owner, items)| {
                let f = f.clone();
                self.invoke_on_staged(owner, api, move |s| async move {
                    let runs = items.into_iter().map(|(slot, topic, partition, input)| {
                        let (p, f) = (s.partition(&topic, partition), f.clone());
                        async move {
                            match p {
                                Some(p) => (slot, Some(f(p, input).await)),
                                None => (slot, None),
                            }
                        }
                    });
                    futures::future::join_all(runs).await
                })
            });
        for (slot, r) in futures::future::join_all(hops).await.into_iter().flatten() {
            results[slot] = r;
        }
        results
    }

    /// A producer id unique across shards and restarts: the start time in ms leaves room
    /// for 2^20 ids per shard per broker start.
    pub fn allocate_producer_id(&self) -> i64 {
        let id = self.next_producer_id.get();
        self.next_producer_id.set(id + self.nshards as i64);
        id
    }

    fn on_envelope(self: &Rc<Self>, env: Envelope) {
        match env {
            Envelope::Call { id, from, call } => {
                let shard = self.clone();
                glommio::spawn_local(async move {
                    let value = call(shard.clone()).await;
                    if shard
                        .senders
                        .send_to(from, Envelope::Reply { id, value })
                        .await
                        .is_err()
                    {
                        tracing::debug!(from, "reply dropped: shard gone");
                    }
                })
                .detach();
            }
            Envelope::Reply { id, value } => {
                if let Some(tx) = self.pending.borrow_mut().remove(&id) {
                    let _ = tx.send(value);
                }
            }
        }
    }
}
