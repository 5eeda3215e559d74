//! The produce path's batch checks: `split_batches` on a partition's records, then
//! `ValidBatch::new` (length, magic, CRC32C) on each; a batch that passes is patched
//! with an offset (and LogAppendTime) and must still validate, with the patched fields
//! read back (assert in pairs).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use runnel::segment::batch::{patch_batch, split_batches, validate_batch};
use runnel::segment::ValidBatch;

fn joined(p: &runnel::segment::batch::PatchedBatch) -> Vec<u8> {
    let mut v = p.header.to_vec();
    v.extend_from_slice(&p.body);
    v
}

fuzz_target!(|data: &[u8]| {
    let _ = validate_batch(data);
    let records = Bytes::copy_from_slice(data);
    let Ok(batches) = split_batches(&records) else {
        return;
    };
    assert_eq!(batches.iter().map(|b| b.len()).sum::<usize>(), data.len());
    for b in batches {
        let Ok(valid) = ValidBatch::new(b.clone()) else {
            continue;
        };
        let h = *valid.header();
        assert_eq!(h.total_len(), b.len());
        assert!(h.last_offset() >= h.base_offset);

        let p = patch_batch(&b, 1 << 40, None);
        assert_eq!(p.len(), b.len());
        let h2 = validate_batch(&joined(&p)).expect("an offset patch keeps the CRC valid");
        assert_eq!(h2.base_offset, 1 << 40);
        assert_eq!(h2.crc, h.crc);

        let p = patch_batch(&b, 7, Some(1_700_000_000_000));
        let h3 = validate_batch(&joined(&p)).expect("a LogAppendTime patch recomputes the CRC");
        assert_eq!(h3.base_offset, 7);
        assert_eq!(h3.max_timestamp, 1_700_000_000_000);
        assert!(h3.is_log_append_time());
    }
});
