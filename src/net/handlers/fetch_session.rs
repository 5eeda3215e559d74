//! Incremental fetch sessions (KIP-227). A session remembers a client's partitions and
//! what it was last told about each, so later requests list only changed partitions and
//! responses carry only partitions with news (records, an error, a new high watermark
//! or log start). Sessions live on the shard whose connection created them, in a
//! per-thread cache (one thread per shard): a request reaching another shard gets
//! FETCH_SESSION_ID_NOT_FOUND and the client simply starts a new session.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Instant;

use uuid::Uuid;

/// Sessions kept per shard (Kafka's max.incremental.fetch.session.cache.slots).
pub const SESSIONS_PER_SHARD_MAX: usize = 1000;
/// Partitions one session may hold; bigger fetches stay sessionless.
pub const SESSION_PARTITIONS_MAX: usize = 10_000;

pub const FETCH_SESSION_ID_NOT_FOUND: i16 = 70;
pub const INVALID_FETCH_SESSION_EPOCH: i16 = 71;

/// A partition as the session tracks it. `topic` is the name (resolved from the id on
/// v13+); `topic_id` the id (nil when unknown).
#[derive(Clone, Debug)]
pub struct SessionPartition {
    pub topic: String,
    pub topic_id: Uuid,
    pub partition: i32,
    pub fetch_offset: i64,
    pub max_bytes: i32,
    /// What the last response said; -2 = never answered (forces inclusion).
    pub high_watermark: i64,
    pub log_start_offset: i64,
}

pub struct Session {
    /// Epoch the next request must carry.
    pub next_epoch: i32,
    /// In the order the client added them (responses keep that order).
    pub partitions: Vec<SessionPartition>,
    last_used: Instant,
}

#[derive(Default)]
struct Cache {
    sessions: HashMap<i32, Session>,
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::default();
}

fn new_id(existing: &HashMap<i32, Session>) -> i32 {
    loop {
        let id = (rand::random::<u32>() >> 1) as i32;
        if id != 0 && !existing.contains_key(&id) {
            return id;
        }
    }
}

/// Stores a new session (evicting the least recently used when full); returns its id.
pub fn create(partitions: Vec<SessionPartition>) -> i32 {
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.sessions.len() >= SESSIONS_PER_SHARD_MAX {
            if let Some(oldest) = c
                .sessions
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(id, _)| *id)
            {
                c.sessions.remove(&oldest);
            }
        }
        let id = new_id(&c.sessions);
        c.sessions.insert(
            id,
            Session {
                next_epoch: 1,
                partitions,
                last_used: Instant::now(),
            },
        );
        id
    })
}

pub fn remove(id: i32) {
    CACHE.with(|c| c.borrow_mut().sessions.remove(&id));
}

/// Takes a session out for an incremental request after checking its epoch; the caller
/// puts it back with `put`. Err carries the Kafka error code.
pub fn take(id: i32, epoch: i32) -> Result<Session, i16> {
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        match c.sessions.get(&id) {
            None => Err(FETCH_SESSION_ID_NOT_FOUND),
            Some(s) if s.next_epoch != epoch => Err(INVALID_FETCH_SESSION_EPOCH),
            Some(_) => Ok(c.sessions.remove(&id).expect("present: checked above")),
        }
    })
}

pub fn put(id: i32, mut session: Session) {
    session.next_epoch = if session.next_epoch == i32::MAX {
        1
    } else {
        session.next_epoch + 1
    };
    session.last_used = Instant::now();
    CACHE.with(|c| c.borrow_mut().sessions.insert(id, session));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(p: i32) -> SessionPartition {
        SessionPartition {
            topic: "t".into(),
            topic_id: Uuid::nil(),
            partition: p,
            fetch_offset: 0,
            max_bytes: 1024,
            high_watermark: -2,
            log_start_offset: -2,
        }
    }

    #[test]
    fn epochs_must_follow_one_another_and_unknown_ids_are_refused() {
        let id = create(vec![part(0)]);
        assert_eq!(take(id, 2).err(), Some(INVALID_FETCH_SESSION_EPOCH));
        let s = take(id, 1).expect("epoch 1 follows creation");
        put(id, s);
        assert_eq!(take(id, 1).err(), Some(INVALID_FETCH_SESSION_EPOCH));
        let s = take(id, 2).expect("epoch 2 after one incremental fetch");
        assert_eq!(s.partitions.len(), 1);
        put(id, s);
        remove(id);
        assert_eq!(take(id, 3).err(), Some(FETCH_SESSION_ID_NOT_FOUND));
    }

    #[test]
    fn the_cache_is_bounded() {
        let ids: Vec<i32> = (0..SESSIONS_PER_SHARD_MAX + 5)
            .map(|_| create(vec![]))
            .collect();
        let live = ids
            .iter()
            .filter(|id| CACHE.with(|c| c.borrow().sessions.contains_key(id)))
            .count();
        assert_eq!(live, SESSIONS_PER_SHARD_MAX);
    }
}
