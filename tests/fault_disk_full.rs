//! Disk full: the broker's data directory is on a 64 MiB ext4 filesystem this test
//! makes itself (an image file on a loop device; needs root, as CI has: the test fails,
//! it does not skip, without it). A filler file takes all but a few MiB; producing
//! until the disk is full must get KAFKA_STORAGE_ERROR (not a crash, not a hang),
//! fetches of what is stored keep working, deleting the filler lets produce work
//! again, and after a SIGKILL + restart every acknowledged record is there, intact.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{FetchRequest, ProduceRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use runnel::segment::testing::encode_batch;

const IMAGE_BYTES: u64 = 64 << 20;
/// Free space left next to the filler: a few batches fit, then the disk is full.
const LEFT_FREE_BYTES: u64 = 6 << 20;
const VALUE_BYTES: usize = 256 << 10;
const KAFKA_STORAGE_ERROR: i16 = 56;
/// More batches than the free space holds: the loop must hit the full disk.
const PRODUCE_ATTEMPTS_MAX: usize = 4 * (LEFT_FREE_BYTES as usize / VALUE_BYTES);

/// A loop-mounted ext4 image; unmounted and removed on drop, whatever happened.
struct SmallFs {
    dir: tempfile::TempDir,
    mount: PathBuf,
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl SmallFs {
    fn new() -> SmallFs {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            euid, 0,
            "this test mounts a filesystem and must run as root (CI does)"
        );
        let dir = tempfile::Builder::new()
            .prefix("runnel-diskfull-")
            .tempdir()
            .unwrap();
        let image = dir.path().join("disk.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(IMAGE_BYTES)
            .unwrap();
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0"])
            .arg(&image));
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount).unwrap();
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&mount));
        SmallFs { dir, mount }
    }

    fn free_bytes(&self) -> u64 {
        let path = std::ffi::CString::new(self.mount.to_str().unwrap()).unwrap();
        // SAFETY: statvfs writes into the zeroed struct we pass; the path is a valid C string.
        unsafe {
            let mut st: libc::statvfs = std::mem::zeroed();
            assert_eq!(libc::statvfs(path.as_ptr(), &mut st), 0, "statvfs");
            st.f_bavail * st.f_frsize
        }
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        // Lazy: a broker still being reaped must not leave the mount behind.
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        let _ = self.dir.path();
    }
}

/// Takes all but `leave` bytes of the filesystem with real (allocated) blocks.
fn fill(path: &Path, free: u64, leave: u64) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::create(path).unwrap();
    let len = free.saturating_sub(leave) as libc::off_t;
    // SAFETY: fallocate on a file descriptor we own.
    let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, len) };
    assert_eq!(
        rc,
        0,
        "fallocate filler: {}",
        std::io::Error::last_os_error()
    );
    f.sync_all().unwrap();
}

fn name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_string()))
}

fn produce_req(topic: &str, records: Bytes) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(name(topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(records))])])
}

fn value(i: usize) -> Vec<u8> {
    let mut v = format!("record-{i}-").into_bytes();
    v.resize(VALUE_BYTES, b'a' + (i % 26) as u8);
    v
}

/// Produce one batch; (error code, base offset). A connection the broker closed or a
/// response that does not come within the read timeout fails the test (a hang).
fn produce(w: &mut Wire, topic: &str, i: usize) -> (i16, i64) {
    let resp = w.call(&produce_req(topic, encode_batch(0, 0, &[&value(i)])), 9);
    let p = &resp.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

/// Every record from offset 0 to the log end, as (offset, value).
fn fetch_all(bootstrap: &str, topic: &str) -> Vec<(i64, Bytes)> {
    let mut w = Wire::connect(bootstrap);
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "fetch_all did not reach the end");
        let next = out.last().map_or(0, |(o, _)| o + 1);
        let req = FetchRequest::default()
            .with_replica_id((-1).into())
            .with_max_wait_ms(0)
            .with_min_bytes(1)
            .with_max_bytes(4 << 20)
            .with_session_epoch(-1)
            .with_topics(vec![FetchTopic::default()
                .with_topic(name(topic))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(0)
                    .with_fetch_offset(next)
                    .with_current_leader_epoch(-1)
                    .with_log_start_offset(-1)
                    .with_partition_max_bytes(4 << 20)])]);
        let resp = w.call(&req, 12);
        let p = &resp.responses[0].partitions[0];
        assert_eq!(p.error_code, 0, "fetch at {next}");
        let mut records = p.records.clone().unwrap_or_default();
        if records.is_empty() {
            assert_eq!(next, p.high_watermark, "empty fetch before the end");
            return out;
        }
        for set in kafka_protocol::records::RecordBatchDecoder::decode_all(&mut records)
            .expect("stored batches decode (CRC checked)")
        {
            for r in set.records {
                if r.offset >= next {
                    out.push((r.offset, r.value.unwrap_or_default()));
                }
            }
        }
    }
}

fn assert_all_acked_readable(bootstrap: &str, topic: &str, acked: &[(usize, i64)], when: &str) {
    let stored = fetch_all(bootstrap, topic);
    for &(i, offset) in acked {
        let got = stored.iter().find(|(o, _)| *o == offset);
        assert!(
            got.is_some_and(|(_, v)| v[..] == value(i)[..]),
            "{when}: acked record {i} at offset {offset} not readable intact"
        );
    }
}

#[test]
fn full_disk_refuses_produce_with_storage_error_and_recovers_when_space_returns() {
    let fs = SmallFs::new();
    let mut broker = Broker::start_with(BrokerOptions {
        data_parent: Some(fs.mount.clone()),
        ..BrokerOptions::default()
    });
    let bootstrap = broker.bootstrap();
    let topic = topic_name("diskfull");
    create_topic_blocking(&bootstrap, &topic, 1);
    let mut w = Wire::connect(&bootstrap);
    let mut acked: Vec<(usize, i64)> = Vec::new();
    let (code, offset) = produce(&mut w, &topic, 0);
    assert_eq!(code, 0, "produce before the disk is full");
    acked.push((0, offset));

    let filler = fs.mount.join("filler");
    fill(&filler, fs.free_bytes(), LEFT_FREE_BYTES);
    eprintln!("disk full: {} bytes free after the filler", fs.free_bytes());

    // Produce until the disk is full.
    let mut i = 1;
    let full_at = loop {
        assert!(
            i < PRODUCE_ATTEMPTS_MAX,
            "{i} batches of {VALUE_BYTES} bytes fit in {LEFT_FREE_BYTES} free bytes"
        );
        match produce(&mut w, &topic, i) {
            (0, offset) => acked.push((i, offset)),
            (KAFKA_STORAGE_ERROR, _) => break i,
            (code, _) => {
                panic!("produce {i} on a full disk: error {code}, not KAFKA_STORAGE_ERROR")
            }
        }
        i += 1;
    };
    eprintln!(
        "disk full: {} batches acked, KAFKA_STORAGE_ERROR at batch {full_at}",
        acked.len()
    );
    assert!(
        acked.len() >= 2,
        "some batches fit before the disk was full"
    );
    assert!(broker.is_running(), "the broker died on a full disk");
    // Still full: still refused, on a new connection too.
    let mut w2 = Wire::connect(&bootstrap);
    assert_eq!(produce(&mut w2, &topic, 10_000).0, KAFKA_STORAGE_ERROR);
    // What is stored stays readable.
    assert_all_acked_readable(&bootstrap, &topic, &acked, "disk full");

    // Space returns: produce works again (the first try may start the retry).
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 20_000;
    loop {
        match produce(&mut w, &topic, n) {
            (0, offset) => {
                acked.push((n, offset));
                break;
            }
            (KAFKA_STORAGE_ERROR, _) => {
                assert!(
                    Instant::now() < deadline,
                    "produce still refused after space returned"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            (code, _) => panic!("produce after space returned: error {code}"),
        }
        n += 1;
    }
    for k in 0..4 {
        let (code, offset) = produce(&mut w, &topic, 30_000 + k);
        assert_eq!(code, 0, "produce after recovery");
        acked.push((30_000 + k, offset));
    }
    assert_all_acked_readable(&bootstrap, &topic, &acked, "after space returned");

    // Nothing on disk is corrupt: a SIGKILL + restart recovers every acked record.
    broker.restart();
    assert_all_acked_readable(&bootstrap, &topic, &acked, "after restart");
    let mut w = Wire::connect(&bootstrap);
    assert_eq!(
        produce(&mut w, &topic, 40_000).0,
        0,
        "produce after restart"
    );
    eprintln!(
        "disk full: {} acked records intact after restart",
        acked.len()
    );
    drop(broker);
    drop(fs);
}
