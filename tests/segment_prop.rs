//! Property: for random batch sizes, record counts, durabilities, segment sizes and
//! reopen points, reading the log back returns exactly what was appended, with dense,
//! monotonic offsets, across rolls and reopens.

use bytes::Bytes;
use glommio::LocalExecutorBuilder;
use proptest::prelude::*;
use runnel::segment::batch::{claimed_len, patch_batch, validate_batch};
use runnel::segment::testing::encode_batch;
use runnel::segment::{Durability, LogConfig, PartitionLog};

#[derive(Clone, Debug)]
enum Op {
    Append {
        records: usize,
        value_len: usize,
        durable: bool,
    },
    Reopen,
    Flush,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        20 => (1usize..5, 0usize..6000, any::<bool>()).prop_map(|(records, value_len, durable)| Op::Append { records, value_len, durable }),
        1 => Just(Op::Reopen),
        1 => Just(Op::Flush),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn read_back_equals_appended_across_rolls_and_reopens(
        ops in prop::collection::vec(op(), 1..120),
        segment_kib in 4u64..64,
        interval in 0u32..8192,
        max_read in 1usize..100_000,
    ) {
        LocalExecutorBuilder::default().io_memory(2 << 20).spawn(move || async move {
            let dir = tempfile::tempdir().unwrap();
            let config = LogConfig { segment_bytes: segment_kib << 10, index_interval_bytes: interval, ..LogConfig::default() };
            let mut log = PartitionLog::open(dir.path().to_path_buf(), config.clone()).await.unwrap();
            let mut expected: Vec<(i64, i64, Vec<u8>)> = Vec::new();
            let mut next = 0i64;
            for (i, op) in ops.iter().enumerate() {
                match op {
                    Op::Append { records, value_len, durable } => {
                        let vals: Vec<Vec<u8>> = (0..*records).map(|k| vec![(i + k) as u8; value_len / records]).collect();
                        let refs: Vec<&[u8]> = vals.iter().map(|v| v.as_slice()).collect();
                        let b = encode_batch(0, i as i64, &refs);
                        let d = if *durable { Durability::Durable } else { Durability::Written };
                        let info = log.append(b.clone(), d).await.unwrap();
                        assert_eq!(info.base_offset, next, "dense offsets");
                        assert_eq!(info.last_offset, next + *records as i64 - 1);
                        next = info.last_offset + 1;
                        let p = patch_batch(&b, info.base_offset, None);
                        expected.push((info.base_offset, info.last_offset, [p.header.as_ref(), p.body.as_ref()].concat()));
                    }
                    Op::Reopen => {
                        log.close().await.unwrap();
                        log = PartitionLog::open(dir.path().to_path_buf(), config.clone()).await.unwrap();
                        assert_eq!(log.log_end_offset(), next);
                    }
                    Op::Flush => log.flush().await.unwrap(),
                }
            }
            // Read everything with a random byte budget, from every batch's base offset
            // and one offset inside it.
            for (idx, (base, last, _)) in expected.iter().enumerate() {
                for offset in [*base, *last] {
                    let r = log.read(offset, max_read).await.unwrap();
                    let bytes = r.chunks.concat();
                    assert!(!bytes.is_empty());
                    let mut p = 0;
                    let mut j = idx;
                    while p < bytes.len() {
                        let len = claimed_len(&bytes[p..]).unwrap() as usize;
                        let h = validate_batch(&bytes[p..p + len]).unwrap();
                        assert_eq!(h.base_offset, expected[j].0, "monotonic, no gaps");
                        assert_eq!(&bytes[p..p + len], expected[j].2.as_slice());
                        p += len;
                        j += 1;
                    }
                    assert!(j == idx + 1 || bytes.len() <= max_read, "budget respected beyond the first batch");
                }
            }
            log.close().await.unwrap();
            let log = PartitionLog::open(dir.path().to_path_buf(), config).await.unwrap();
            assert_eq!(log.log_end_offset(), next);
            let mut offset = 0;
            let mut all = Vec::new();
            while offset < next {
                let bytes = log.read(offset, 1 << 20).await.unwrap().chunks.concat();
                let mut p = 0;
                while p < bytes.len() {
                    let len = claimed_len(&bytes[p..]).unwrap() as usize;
                    offset = validate_batch(&bytes[p..p + len]).unwrap().last_offset() + 1;
                    p += len;
                }
                all.extend_from_slice(&bytes);
            }
            let want: Vec<u8> = expected.iter().flat_map(|e| e.2.iter().copied()).collect();
            assert_eq!(Bytes::from(all), Bytes::from(want));
        }).unwrap().join().unwrap();
    }
}
