//! The produce path's record-level check (`records::validate_produced`) over arbitrary
//! batches: the length, magic and CRC are fixed up so every input reaches the records
//! (and the decompressors, for the codec bits the input sets). Must never panic, and
//! never hold the decompressed records (it streams them; `-rss_limit_mb=256`). A batch
//! it accepts decompresses whole and walks again with the slice walker to the count
//! its header claims (assert in pairs).
#![no_main]

use libfuzzer_sys::fuzz_target;
use runnel::segment::batch::{compute_crc, validate_batch, BATCH_HEADER_LEN};
use runnel::segment::compact::Codec;
use runnel::segment::compact::decompress;
use runnel::segment::records::{validate_produced, walk_records, ProduceRules};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let rules = ProduceRules {
        compacted: flags & 1 == 1,
    };
    // The walker alone over raw bytes, with a count from the flags byte.
    let _ = walk_records(rest, i32::from(flags >> 1), |_, _| Ok(()));

    let mut b = rest.to_vec();
    if b.len() < BATCH_HEADER_LEN {
        return;
    }
    let len = (b.len() - 12) as i32;
    b[8..12].copy_from_slice(&len.to_be_bytes());
    b[16] = 2;
    let crc = compute_crc(&b[..BATCH_HEADER_LEN], &b[BATCH_HEADER_LEN..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    let Ok(h) = validate_batch(&b) else {
        return;
    };
    if validate_produced(&h, &b, rules).is_ok() {
        // Accepted: the whole records section decompresses (the stored-batch path, as
        // compaction and replay read it) and walks the same.
        let codec = Codec::from_attributes(h.attributes).expect("accepted codecs are known");
        let raw = decompress(codec, &b[BATCH_HEADER_LEN..]).expect("accepted records decompress");
        let mut n = 0usize;
        walk_records(&raw, h.records_count, |i, r| {
            assert_eq!(i, n);
            assert_eq!(r.offset_delta as usize, i);
            assert!(r.bytes.end <= raw.len());
            assert!(!rules.compacted || r.key.is_some());
            n += 1;
            Ok(())
        })
        .expect("an accepted batch walks again");
        assert_eq!(n, h.records_count as usize);
    }
});
