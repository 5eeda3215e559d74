//! Array counts against allocation: a request body whose arrays claim any count, with a
//! tail of up to 8 MiB of one repeated byte behind it, decoded by `decode_request` as
//! a connection would. Must hold: no single allocation over `ALLOCATION_BYTES_MAX`,
//! whatever the counts claim (the decoders may only reserve what the bytes left can
//! hold, and only a bounded amount of that up front).
//!
//! Input: [api selector, version selector, tail length / 32 KiB, tail byte, body...].
//! The selector picks CreateTopics half the time (the request whose elements are the
//! largest in memory), else any served API. libFuzzer's own `-malloc_limit_mb` needs a
//! sanitizer's malloc hooks; this target counts allocations itself, so a `-s none`
//! build checks the bound too.
//!
//! A count that does fit decodes for real, up to `REQUEST_DECODED_BYTES_MAX` (64 MiB)
//! of arrays, freed after each run. glibc's dynamic mmap threshold would keep such
//! freed buffers in the heap and let RSS creep past `-rss_limit_mb` over many runs
//! without any one input needing it, so the threshold is pinned at its default.
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader};
use kafka_protocol::protocol::{Encodable, StrBytes};
use libfuzzer_sys::fuzz_target;
use runnel::net::handlers::{decode_request, SUPPORTED};

/// The largest allocation any decode may make (the bound `scripts/fuzz` also passes
/// to libFuzzer as -malloc_limit_mb / -rss_limit_mb).
const ALLOCATION_BYTES_MAX: usize = 256 << 20;
/// Most filler bytes behind the body: large enough that reserving
/// `min(count, bytes left)` elements of ~100 bytes (the earlier bound) exceeds
/// `ALLOCATION_BYTES_MAX`.
const TAIL_BYTES_MAX: usize = 255 << 15;

struct Bounded;

// SAFETY: forwards to the system allocator; only refuses (aborts on) huge requests.
unsafe impl GlobalAlloc for Bounded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check(new_size);
        System.realloc(ptr, layout, new_size)
    }
}

fn check(size: usize) {
    if size > ALLOCATION_BYTES_MAX {
        // No formatting (it could allocate): a fixed message, then abort, which
        // libFuzzer reports as a crash with the input saved.
        use std::io::Write;
        let _ = std::io::stderr().write_all(b"create_topics: allocation over 256 MiB from decoding\n");
        std::process::abort();
    }
}

#[global_allocator]
static ALLOC: Bounded = Bounded;

/// glibc's default M_MMAP_THRESHOLD; pinning it turns off the dynamic raise.
const MMAP_THRESHOLD_BYTES: i32 = 128 * 1024;

fuzz_target!(|data: &[u8]| {
    static PIN_MMAP_THRESHOLD: std::sync::Once = std::sync::Once::new();
    // SAFETY: mallopt only changes the allocator's tuning.
    PIN_MMAP_THRESHOLD.call_once(|| unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
    });
    let [api, ver, tail_len, tail_byte, body @ ..] = data else {
        return;
    };
    let (key, lo, hi) = if api & 1 == 0 {
        SUPPORTED
            .iter()
            .find(|(k, _, _)| *k == ApiKey::CreateTopics)
            .copied()
            .expect("CreateTopics is served")
    } else {
        SUPPORTED[usize::from(api >> 1) % SUPPORTED.len()]
    };
    let span = (hi - lo + 1) as u8;
    let version = lo + i16::from(ver % span);
    let header = RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(1)
        .with_client_id(Some(StrBytes::from_static_str("fuzz")));
    let tail = usize::from(*tail_len) << 15;
    debug_assert!(tail <= TAIL_BYTES_MAX);
    let mut frame = BytesMut::with_capacity(64 + body.len() + tail);
    if header
        .encode(&mut frame, key.request_header_version(version))
        .is_err()
    {
        return;
    }
    frame.put_slice(body);
    frame.put_bytes(*tail_byte, tail);
    let frame: Bytes = frame.freeze();
    let _ = decode_request(key, version, &frame);
});
