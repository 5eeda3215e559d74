//! A writer process appends with `Durability::Durable` from several concurrent tasks
//! and prints every acknowledged batch; the parent SIGKILLs it mid-stream, reopens the
//! log and checks that every acknowledged batch is there, at its offset, intact.
//!
//! The child is this test binary itself, re-run with `RUNNEL_SEGMENT_KILL_CHILD=<dir>`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use glommio::LocalExecutorBuilder;
use runnel::segment::batch::validate_batch;
use runnel::segment::testing::encode_batch;
use runnel::segment::{Durability, LogConfig, PartitionLog};

const CHILD_ENV: &str = "RUNNEL_SEGMENT_KILL_CHILD";
const TASKS: usize = 8;

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 256 << 10,
        ..LogConfig::default()
    }
}

fn payload(task: usize, seq: usize) -> Vec<u8> {
    let mut v = format!("task-{task}-seq-{seq}-").into_bytes();
    v.resize(100 + (seq * 37 + task * 11) % 3000, b'a' + (seq % 26) as u8);
    v
}

fn child(dir: String) -> ! {
    LocalExecutorBuilder::default()
        .io_memory(2 << 20)
        .spawn(move || async move {
            let log = PartitionLog::open(dir.into(), config()).await.unwrap();
            let tasks: Vec<_> = (0..TASKS)
                .map(|task| {
                    let log = log.clone();
                    glommio::spawn_local(async move {
                        for seq in 0.. {
                            let b = encode_batch(0, 0, &[payload(task, seq).as_slice()]);
                            let info = log.append(b, Durability::Durable).await.unwrap();
                            println!("ACK {} {task} {seq}", info.base_offset);
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await;
            }
        })
        .unwrap()
        .join()
        .unwrap();
    std::process::exit(0)
}

#[test]
fn every_durable_ack_survives_sigkill() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child(dir);
    }
    let dir = tempfile::tempdir().unwrap();
    for round in 0..3 {
        let mut acked: Vec<(i64, usize, usize)> = Vec::new();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "every_durable_ack_survives_sigkill",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let started = Instant::now();
        let want = 300 + round * 200;
        for line in stdout.lines() {
            let line = line.unwrap();
            let Some(rest) = line.strip_prefix("ACK ") else {
                continue;
            };
            let f: Vec<&str> = rest.split(' ').collect();
            acked.push((
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            ));
            if acked.len() >= want || started.elapsed() > Duration::from_secs(20) {
                break;
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert!(
            acked.len() >= 50,
            "child acknowledged only {} appends",
            acked.len()
        );

        let path = dir.path().to_path_buf();
        let acked_count = acked.len();
        LocalExecutorBuilder::default()
            .io_memory(2 << 20)
            .spawn(move || async move {
                let log = PartitionLog::open(path, config()).await.unwrap();
                for (offset, task, seq) in acked {
                    assert!(
                        offset < log.log_end_offset(),
                        "acked offset {offset} lost (end {})",
                        log.log_end_offset()
                    );
                    let r = log.read(offset, 1).await.unwrap();
                    let bytes = r.chunks.concat();
                    let h = validate_batch(&bytes).unwrap();
                    assert_eq!(h.base_offset, offset);
                    let want = payload(task, seq);
                    assert!(
                        bytes.windows(want.len()).any(|w| w == want.as_slice()),
                        "offset {offset} holds another batch"
                    );
                }
            })
            .unwrap()
            .join()
            .unwrap();
        eprintln!("round {round}: {acked_count} acknowledged appends survived SIGKILL");
    }
}
