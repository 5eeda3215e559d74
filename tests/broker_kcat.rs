//! kcat (librdkafka's command-line client) against `runnel serve`: produce with
//! keys and headers, consume from the beginning to the end, compare the output
//! byte for byte. kcat must be installed (`.ci/run` installs it); a missing kcat
//! is a test failure, not a skip.
//!
//! kcat on Debian 12 bundles librdkafka 2.0.2, older than 2.11: it only enables
//! compression when the broker advertises Produce v0 (PROTOCOL.md, "Traps").
//! `kcat_compressed_produce_is_stored_compressed` checks exactly that.

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use kafka_protocol::records::Compression;

const KCAT_TIMEOUT: Duration = Duration::from_secs(30);

fn kcat_bin() -> String {
    let bin = std::env::var("KCAT").unwrap_or_else(|_| "kcat".to_string());
    match Command::new(&bin).arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status() {
        Ok(s) if s.success() => bin,
        other => panic!("kcat is required for this test ({bin} -V gave {other:?}); install it: apt-get install -y kcat"),
    }
}

/// Run kcat with `args`, feed `stdin`, and return stdout. Panics on a non-zero
/// exit or if it runs longer than `KCAT_TIMEOUT`.
fn kcat(args: &[&str], stdin: &[u8]) -> String {
    let mut child = Command::new(kcat_bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kcat");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin)
        .expect("write kcat stdin");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).unwrap();
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        stderr.read_to_string(&mut s).unwrap();
        s
    });
    let deadline = Instant::now() + KCAT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "kcat {args:?} ran longer than {KCAT_TIMEOUT:?}; stderr: {}",
                err_reader.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = out_reader.join().unwrap();
    let err = err_reader.join().unwrap();
    assert!(
        status.success(),
        "kcat {args:?} exited with {status}; stderr:\n{err}"
    );
    out
}

#[test]
fn kcat_round_trip_with_keys_and_headers() {
    let broker = Broker::start(); // auto-create on: kcat -P creates the topic
    let bootstrap = broker.bootstrap();
    let topic = topic_name("kcat");
    let n = 50;
    let input: String = (0..n)
        .map(|i| format!("key-{i}:value {i} with spaces\n"))
        .collect();
    kcat(
        &[
            "-b",
            &bootstrap,
            "-X",
            "broker.address.family=v4",
            "-t",
            &topic,
            "-P",
            "-K:",
            "-H",
            "trace=abc",
            "-H",
            "origin=kcat",
        ],
        input.as_bytes(),
    );

    let out = kcat(
        &[
            "-b",
            &bootstrap,
            "-X",
            "broker.address.family=v4",
            "-C",
            "-t",
            &topic,
            "-o",
            "beginning",
            "-e",
            "-q",
            "-f",
            "%p|%o|%k|%s|%h\n",
        ],
        b"",
    );
    let expected: String = (0..n)
        .map(|i| format!("0|{i}|key-{i}|value {i} with spaces|trace=abc,origin=kcat\n"))
        .collect();
    assert_eq!(out, expected, "kcat consumed output");

    // A second produce appends after the first; reading from offset 50 gives only it.
    kcat(
        &[
            "-b",
            &bootstrap,
            "-X",
            "broker.address.family=v4",
            "-t",
            &topic,
            "-P",
            "-K:",
        ],
        b"late:arrival\n",
    );
    let out = kcat(
        &[
            "-b",
            &bootstrap,
            "-X",
            "broker.address.family=v4",
            "-C",
            "-t",
            &topic,
            "-o",
            "50",
            "-e",
            "-q",
            "-f",
            "%o|%k|%s\n",
        ],
        b"",
    );
    assert_eq!(out, "50|late|arrival\n");
}

#[test]
fn kcat_compressed_produce_is_stored_compressed() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    for (codec, expected) in [
        ("gzip", Compression::Gzip),
        ("lz4", Compression::Lz4),
        ("snappy", Compression::Snappy),
        ("zstd", Compression::Zstd),
    ] {
        let topic = topic_name(&format!("kcat-{codec}"));
        let input: String = (0..100)
            .map(|i| format!("{i} {}\n", "compressible ".repeat(8)))
            .collect();
        kcat(
            &[
                "-b",
                &bootstrap,
                "-X",
                "broker.address.family=v4",
                "-t",
                &topic,
                "-P",
                "-z",
                codec,
                "-X",
                "linger.ms=50",
            ],
            input.as_bytes(),
        );
        let out = kcat(
            &[
                "-b",
                &bootstrap,
                "-X",
                "broker.address.family=v4",
                "-C",
                "-t",
                &topic,
                "-o",
                "beginning",
                "-e",
                "-q",
            ],
            b"",
        );
        assert_eq!(out, input, "{codec}: kcat consumed output");
        let stored = stored_batch_codecs(&bootstrap, &topic);
        assert!(
            !stored.is_empty() && stored.iter().all(|&c| c == expected),
            "{codec}: kcat (librdkafka 2.0) sent {stored:?}, expected {expected:?} — is Produce v0 advertised?"
        );
    }
}
