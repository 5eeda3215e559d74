//! Idempotent-producer state (per producer id: its epoch and its latest batches'
//! sequences) and the snapshot file that persists it, as Kafka's ProducerStateManager
//! does: a restart loads the newest snapshot at or below the log end and replays only
//! the batches after it, so a producer idle for any amount of other traffic keeps its
//! state. Pure data and encoding; the files themselves are the log's
//! (`PartitionLog::write_producer_snapshot`), the policy is `Partition`'s.
//!
//! Snapshot format, version 2, big-endian (version 1 lacked the last-write time):
//! ```text
//! version u16 | crc32c u32 (of every byte after it) | offset i64 | producers u32 |
//! producers × { producer id i64 | epoch i16 | last write ms i64 | batches u8 |
//!               batches × { first sequence i32 | last sequence i32 | base offset i64 } }
//! ```
//! `offset` is the log offset the state covers: every batch below it, none above.

use std::collections::{HashMap, VecDeque};

use crate::segment::BatchHeader;

/// Batches per producer remembered for duplicate detection (Kafka keeps 5: the most a
/// client may have in flight with idempotence on).
pub const PRODUCER_BATCHES_REMEMBERED: usize = 5;

const SNAPSHOT_VERSION: u16 = 2;
const SNAPSHOT_HEADER_BYTES: usize = 2 + 4 + 8 + 4;
const SNAPSHOT_PRODUCER_BYTES_MIN: usize = 8 + 2 + 8 + 1;
const SNAPSHOT_BATCH_BYTES: usize = 4 + 4 + 8;
const _: () = assert!(PRODUCER_BATCHES_REMEMBERED <= u8::MAX as usize);

#[derive(Default, Clone, Debug, PartialEq, Eq)]
pub struct ProducerState {
    pub epoch: i16,
    /// (first sequence, last sequence, base offset) of the latest batches, oldest first.
    pub recent: VecDeque<(i32, i32, i64)>,
    /// Broker wall-clock time (ms) this partition last saw a batch of it (a replay from
    /// the log counts as seeing it): what `producer.id.expiration.ms` is measured from.
    /// Not the batch's timestamp, which a client may set to any time.
    pub last_ms: i64,
}

pub type Producers = HashMap<i64, ProducerState>;

/// Records a batch that is in the log (replicated, or read back from it) without
/// checking its sequence, keeping the newest `PRODUCER_BATCHES_REMEMBERED` per producer.
pub fn record_batch(producers: &mut Producers, h: &BatchHeader, now_ms: i64) {
    if h.producer_id < 0 {
        return;
    }
    let state = producers.entry(h.producer_id).or_default();
    state.last_ms = state.last_ms.max(now_ms);
    if h.producer_epoch > state.epoch {
        state.epoch = h.producer_epoch;
        state.recent.clear();
    }
    let last_seq = h.base_sequence.wrapping_add(h.last_offset_delta);
    state
        .recent
        .push_back((h.base_sequence, last_seq, h.base_offset));
    if state.recent.len() > PRODUCER_BATCHES_REMEMBERED {
        state.recent.pop_front();
    }
}

/// Forgets the producers that wrote nothing for `expiration_ms` (Kafka's
/// `producer.id.expiration.ms`); returns how many. A forgotten producer that comes
/// back is a new one: its next batch starts wherever it says.
pub fn expire(producers: &mut Producers, now_ms: i64, expiration_ms: i64) -> usize {
    let before = producers.len();
    producers.retain(|_, s| now_ms.saturating_sub(s.last_ms) < expiration_ms);
    before - producers.len()
}

/// The snapshot of `producers` covering the log below `offset`. Producers in id order,
/// so equal states encode equally.
pub fn encode_snapshot(offset: i64, producers: &Producers) -> Vec<u8> {
    let mut ids: Vec<i64> = producers.keys().copied().collect();
    ids.sort_unstable();
    let body_bytes: usize = producers
        .values()
        .map(|s| SNAPSHOT_PRODUCER_BYTES_MIN + s.recent.len() * SNAPSHOT_BATCH_BYTES)
        .sum();
    let mut out = Vec::with_capacity(SNAPSHOT_HEADER_BYTES + body_bytes);
    out.extend_from_slice(&SNAPSHOT_VERSION.to_be_bytes());
    out.extend_from_slice(&[0; 4]); // the CRC, once the rest is written
    out.extend_from_slice(&offset.to_be_bytes());
    let count = u32::try_from(ids.len()).expect("fewer than 2^32 producers");
    out.extend_from_slice(&count.to_be_bytes());
    for id in ids {
        let s = &producers[&id];
        assert!(s.recent.len() <= PRODUCER_BATCHES_REMEMBERED);
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&s.epoch.to_be_bytes());
        out.extend_from_slice(&s.last_ms.to_be_bytes());
        out.push(s.recent.len() as u8);
        for &(first, last, base) in &s.recent {
            out.extend_from_slice(&first.to_be_bytes());
            out.extend_from_slice(&last.to_be_bytes());
            out.extend_from_slice(&base.to_be_bytes());
        }
    }
    let crc = crc32c::crc32c(&out[6..]);
    out[2..6].copy_from_slice(&crc.to_be_bytes());
    out
}

/// Decodes a snapshot that must cover the log below `offset` (the offset its file name
/// gives). Anything but an intact snapshot of this version is an error saying why.
pub fn decode_snapshot(raw: &[u8], offset: i64) -> Result<Producers, String> {
    struct Cursor<'a>(&'a [u8]);
    impl Cursor<'_> {
        fn take<const N: usize>(&mut self) -> Result<[u8; N], String> {
            if self.0.len() < N {
                return Err("truncated".into());
            }
            let (head, rest) = self.0.split_at(N);
            self.0 = rest;
            Ok(head.try_into().expect("N bytes"))
        }
    }
    if raw.len() < SNAPSHOT_HEADER_BYTES {
        return Err(format!("{} bytes, shorter than a header", raw.len()));
    }
    let mut c = Cursor(raw);
    let version = u16::from_be_bytes(c.take()?);
    if version != SNAPSHOT_VERSION {
        return Err(format!("version {version}, expected {SNAPSHOT_VERSION}"));
    }
    let crc = u32::from_be_bytes(c.take()?);
    if crc32c::crc32c(c.0) != crc {
        return Err("CRC mismatch".into());
    }
    let covers = i64::from_be_bytes(c.take()?);
    if covers != offset {
        return Err(format!("covers offset {covers}, its name says {offset}"));
    }
    let count = u32::from_be_bytes(c.take()?) as usize;
    // Bounds the allocation by the file, not by a count the CRC happened to pass.
    if count > c.0.len() / SNAPSHOT_PRODUCER_BYTES_MIN {
        return Err(format!("{count} producers in {} bytes", c.0.len()));
    }
    let mut producers = Producers::with_capacity(count);
    for _ in 0..count {
        let id = i64::from_be_bytes(c.take()?);
        let epoch = i16::from_be_bytes(c.take()?);
        let last_ms = i64::from_be_bytes(c.take()?);
        let [n] = c.take::<1>()?;
        if id < 0 || usize::from(n) > PRODUCER_BATCHES_REMEMBERED {
            return Err(format!("producer {id} with {n} batches"));
        }
        let mut recent = VecDeque::with_capacity(usize::from(n));
        for _ in 0..n {
            let first = i32::from_be_bytes(c.take()?);
            let last = i32::from_be_bytes(c.take()?);
            let base = i64::from_be_bytes(c.take()?);
            if !(0..offset).contains(&base) {
                return Err(format!(
                    "producer {id}: batch at {base}, not below {offset}"
                ));
            }
            recent.push_back((first, last, base));
        }
        if producers
            .insert(
                id,
                ProducerState {
                    epoch,
                    recent,
                    last_ms,
                },
            )
            .is_some()
        {
            return Err(format!("producer {id} twice"));
        }
    }
    if !c.0.is_empty() {
        return Err(format!("{} bytes after the last producer", c.0.len()));
    }
    Ok(producers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Producers {
        let mut p = Producers::new();
        p.insert(
            7,
            ProducerState {
                epoch: 2,
                recent: VecDeque::from([(0, 4, 10), (5, 9, 20), (10, 10, 31)]),
                last_ms: 1_000,
            },
        );
        p.insert(
            3,
            ProducerState {
                epoch: 0,
                recent: VecDeque::from([(i32::MAX - 1, 0, 40)]),
                last_ms: 5_000,
            },
        );
        p.insert(12, ProducerState::default());
        p
    }

    #[test]
    fn snapshot_round_trips() {
        let p = sample();
        let raw = encode_snapshot(50, &p);
        assert_eq!(decode_snapshot(&raw, 50), Ok(p.clone()));
        assert_eq!(encode_snapshot(50, &p), raw, "deterministic encoding");
        let empty = encode_snapshot(0, &Producers::new());
        assert_eq!(empty.len(), SNAPSHOT_HEADER_BYTES);
        assert_eq!(decode_snapshot(&empty, 0), Ok(Producers::new()));
    }

    #[test]
    fn damaged_snapshots_are_refused() {
        let raw = encode_snapshot(50, &sample());
        // Every single-bit flip and every truncation is caught.
        for i in 0..raw.len() {
            for bit in 0..8 {
                let mut bad = raw.clone();
                bad[i] ^= 1 << bit;
                assert!(
                    decode_snapshot(&bad, 50).is_err(),
                    "flip byte {i} bit {bit}"
                );
            }
        }
        for len in 0..raw.len() {
            assert!(decode_snapshot(&raw[..len], 50).is_err(), "cut at {len}");
        }
        let mut longer = raw.clone();
        longer.push(0);
        assert!(decode_snapshot(&longer, 50).is_err(), "trailing byte");
        // Intact but named for another offset (a file renamed by hand, or a bug).
        let e = decode_snapshot(&raw, 60).unwrap_err();
        assert!(e.contains("covers offset 50"), "{e}");
    }

    #[test]
    fn a_well_formed_snapshot_with_impossible_content_is_refused() {
        // Batches at or above the covered offset, and too many batches for a producer,
        // with a correct CRC: written by something else than this encoder.
        let mut p = sample();
        p.get_mut(&7).unwrap().recent.push_back((11, 11, 50));
        let e = decode_snapshot(&encode_snapshot(50, &p), 50).unwrap_err();
        assert!(e.contains("not below 50"), "{e}");
        let mut raw = encode_snapshot(50, &sample());
        // Producer 3 is first (id order); its batch count sits after id, epoch, time.
        let at = SNAPSHOT_HEADER_BYTES + 8 + 2 + 8;
        raw[at] = 6;
        let crc = crc32c::crc32c(&raw[6..]);
        raw[2..6].copy_from_slice(&crc.to_be_bytes());
        assert!(decode_snapshot(&raw, 50).is_err());
        let mut huge = encode_snapshot(50, &Producers::new());
        huge[14..18].copy_from_slice(&u32::MAX.to_be_bytes());
        let crc = crc32c::crc32c(&huge[6..]);
        huge[2..6].copy_from_slice(&crc.to_be_bytes());
        let e = decode_snapshot(&huge, 50).unwrap_err();
        assert!(e.contains("producers in 0 bytes"), "{e}");
    }

    #[test]
    fn producers_idle_for_the_expiration_are_forgotten() {
        let mut p = sample();
        // Producer 12 last wrote at 0, 7 at 1000, 3 at 5000; 1000 ms expiration at 5500.
        assert_eq!(expire(&mut p, 5_500, 1_000), 2);
        assert_eq!(p.keys().copied().collect::<Vec<_>>(), vec![3]);
        let mut p = sample();
        assert_eq!(expire(&mut p, 6_000, i64::MAX), 0, "nothing expires");
        // Seeing a batch refreshes the time, never moves it back.
        let mut h = crate::segment::BatchHeader::parse(&crate::segment::testing::encode_batch(
            0,
            0,
            &[b"v"],
        ))
        .unwrap();
        h.producer_id = 7;
        h.producer_epoch = 2;
        h.base_sequence = 11;
        h.base_offset = 32;
        record_batch(&mut p, &h, 9_000);
        assert_eq!(p[&7].last_ms, 9_000);
        record_batch(&mut p, &h, 8_000);
        assert_eq!(p[&7].last_ms, 9_000);
        assert_eq!(expire(&mut p, 9_500, 1_000), 2);
        assert_eq!(p.keys().copied().collect::<Vec<_>>(), vec![7]);
    }
}
