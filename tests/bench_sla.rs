//! `runnel-bench` SLA mode, run as users run it: the built binary with a spec file against
//! a real broker. An impossible target must fail with a non-zero exit; a loose one must
//! pass with exit 0 and leave the JSON, HDR log and plot it was asked for.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Bound on one bench run (the specs below run for ~1.5 s plus startup and drain).
const BENCH_RUN_TIMEOUT: Duration = Duration::from_secs(60);

fn run_bench(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_runnel-bench"))
        .args(args)
        .arg("--quiet")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn runnel-bench");
    let deadline = Instant::now() + BENCH_RUN_TIMEOUT;
    loop {
        if child.try_wait().expect("wait runnel-bench").is_some() {
            return child
                .wait_with_output()
                .expect("collect runnel-bench output");
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child
                .wait_with_output()
                .expect("collect runnel-bench output");
            panic!(
                "runnel-bench did not finish in {BENCH_RUN_TIMEOUT:?}\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn write_spec(dir: &Path, name: &str, sla: &str) -> String {
    let path = dir.join(format!("{name}.toml"));
    let text = format!(
        "name = \"{name}\"\nrate = 500\nmessage_bytes = 256\npartitions = 2\nduration_s = 1.5\ndrain_s = 5\n\n[sla]\n{sla}\n"
    );
    std::fs::write(&path, text).expect("write spec");
    path.to_str().expect("utf-8 temp path").to_string()
}

fn show(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn sla_mode_fails_with_nonzero_exit_when_p99_target_is_impossible() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = write_spec(dir.path(), "impossible", "p99_ms = 0.001");
    let out = run_bench(&["--spec", &spec, "--bootstrap", &broker.bootstrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(stdout.contains("SLA: FAIL"), "{}", show(&out));
    let p99_line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("p99_ms"))
        .unwrap_or_else(|| panic!("no p99_ms check line\n{}", show(&out)));
    assert!(p99_line.ends_with("FAIL"), "{p99_line}");
    // The load itself ran: records were acked.
    assert!(stdout.contains("\"acked\":"), "{}", show(&out));
}

#[test]
fn sla_mode_passes_with_loose_targets_and_writes_its_outputs() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = write_spec(
        dir.path(),
        "loose",
        "p99_ms = 30000\np999_ms = 30000\ne2e_p99_ms = 30000\nmin_msg_s = 50",
    );
    let json = dir.path().join("out.json");
    let hlog = dir.path().join("out.hlog");
    let plot = dir.path().join("out.svg");
    let out = run_bench(&[
        "--spec",
        &spec,
        "--bootstrap",
        &broker.bootstrap(),
        "--json",
        json.to_str().unwrap(),
        "--hdr-log",
        hlog.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("SLA: PASS"), "{}", show(&out));

    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("JSON written")).expect("valid JSON");
    let r = &doc["results"];
    assert_eq!(r["mode"], "open");
    let acked = r["produced"]["records"].as_u64().expect("produced.records");
    // 500 msg/s for 1.5 s, scheduled from the intended times: exactly 750.
    assert_eq!(acked, 750, "{doc:#}");
    assert_eq!(r["consumed"]["records"].as_u64(), Some(acked), "{doc:#}");
    assert!(r["latency_ms"]["produce"]["p99"].as_f64().unwrap() > 0.0);
    assert!(r["latency_ms"]["e2e"]["count"].as_u64().unwrap() > 0);
    assert!(r["sla"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["pass"] == true));

    let log = std::fs::read_to_string(&hlog).expect("HDR log written");
    assert!(log.lines().any(|l| l.starts_with("Tag=produce,")), "{log}");
    assert!(log.lines().any(|l| l.starts_with("Tag=e2e,")), "{log}");
    let svg = std::fs::read_to_string(&plot).expect("plot written");
    assert!(
        svg.starts_with("<svg") && svg.contains("99.9%"),
        "{svg:.300}"
    );
}

#[test]
fn spec_with_an_unknown_target_is_rejected_before_any_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = write_spec(dir.path(), "typo", "p99ms = 5");
    // No broker: the spec must be refused before connecting anywhere.
    let out = run_bench(&["--spec", &spec, "--bootstrap", "127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("p99ms: unknown target"), "{}", show(&out));
}

#[test]
fn every_perf_spec_is_accepted_by_the_bench() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("perf");
    let mut specs: Vec<_> = std::fs::read_dir(root.join("workloads"))
        .expect("perf/workloads")
        .map(|e| e.expect("dir entry").path())
        .collect();
    specs.push(root.join("sla-example.toml"));
    assert!(specs.len() >= 7, "{specs:?}");
    for spec in specs {
        // --check parses the spec and flags and exits without connecting.
        let out = run_bench(&["--spec", spec.to_str().unwrap(), "--check"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}",
            spec.display(),
            show(&out)
        );
    }
}
