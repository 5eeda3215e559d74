//! The `runnel` client subcommands (`topic`, `produce`, `consume`, `group`, `cluster`)
//! run as processes against a real broker, as a user runs them: output, `--json`
//! documents, exit codes (0 ok, 1 error, 2 usage, 3 not found), bounded failure on
//! an unreachable broker. kcat cross-checks what the CLI writes and reads.

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rdkafka::producer::FutureRecord;
use serde_json::Value;

/// Upper bound for one CLI run; every run below is expected to take a few seconds.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl Run {
    fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "stderr: {}\nstdout: {}",
            self.stderr, self.stdout
        );
        self
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }
    fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }
}

/// Runs a program with `stdin`, killing it after `RUN_TIMEOUT`.
fn run_program(program: &str, args: &[&str], stdin: &[u8]) -> Run {
    let start = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .env_remove("RUNNEL_BOOTSTRAP")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        out.read_to_string(&mut s).unwrap();
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        err.read_to_string(&mut s).unwrap();
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > RUN_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{program} {args:?} ran longer than {RUN_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    writer.join().unwrap();
    Run {
        code: status.code().unwrap_or(-1),
        stdout: out_reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
        elapsed: start.elapsed(),
    }
}

/// `runnel ARGS -b BROKER`.
fn cli(broker: &str, args: &[&str], stdin: &[u8]) -> Run {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--bootstrap-server", broker, "--timeout-ms", "10000"]);
    run_program(runnel_bin().to_str().unwrap(), &all, stdin)
}

fn kcat(args: &[&str], stdin: &[u8]) -> Run {
    let bin = std::env::var("KCAT").unwrap_or_else(|_| "kcat".to_string());
    run_program(&bin, args, stdin).ok()
}

#[test]
fn topic_create_list_describe_delete_with_exit_codes() {
    let broker = Broker::start();
    let b = &broker.bootstrap();
    let t = &topic_name("cli-topic");
    let created = cli(
        b,
        &[
            "topic",
            "create",
            t,
            "-p",
            "3",
            "-c",
            "retention.ms=60000",
            "--json",
        ],
        b"",
    )
    .ok();
    assert_eq!(created.json()["created"], true);
    // Again: an error, unless --if-not-exists.
    let again = cli(b, &["topic", "create", t], b"");
    assert_eq!(again.code, 1, "{}", again.stderr);
    assert!(again.stderr.contains("already exists"), "{}", again.stderr);
    cli(b, &["topic", "create", t, "--if-not-exists"], b"").ok();

    let list = cli(b, &["topic", "list", "--json"], b"").ok().json();
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|x| x["topic"] == t.as_str() && x["partitions"] == 3),
        "{list}"
    );
    let table = cli(b, &["topic", "list"], b"").ok().stdout;
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == [t.as_str(), "3"]),
        "{table}"
    );

    let d = cli(b, &["topic", "describe", t, "--json"], b"").ok().json();
    assert_eq!(d["partitions"].as_array().unwrap().len(), 3, "{d}");
    assert_eq!(d["partitions"][0]["leader"], 0);
    assert_eq!(d["configs"]["retention.ms"]["value"], "60000");
    assert_eq!(d["configs"]["retention.ms"]["source"], "topic");
    assert_eq!(d["configs"]["cleanup.policy"]["source"], "default");

    cli(b, &["topic", "delete", t], b"").ok();
    let gone = cli(b, &["topic", "describe", t], b"");
    assert_eq!(gone.code, 3, "{}", gone.stderr);
    assert!(gone.stderr.contains("unknown topic"), "{}", gone.stderr);
    assert_eq!(cli(b, &["topic", "delete", t], b"").code, 3);
    cli(b, &["topic", "delete", t, "--if-exists"], b"").ok();
    // Describing must not have auto-created it.
    let list = cli(b, &["topic", "list", "--json"], b"").ok().json();
    assert!(!list.to_string().contains(t.as_str()), "{list}");
}

#[test]
fn topic_alter_config_sets_and_deletes_and_reports_broker_errors() {
    let broker = Broker::start();
    let b = &broker.bootstrap();
    let t = &topic_name("cli-alter");
    cli(b, &["topic", "create", t], b"").ok();
    let r = cli(
        b,
        &[
            "topic",
            "alter-config",
            t,
            "--set",
            "retention.ms=5000",
            "--set",
            "segment.ms=9000",
            "--json",
        ],
        b"",
    )
    .ok()
    .json();
    assert_eq!(r["overrides"]["retention.ms"], "5000", "{r}");
    assert_eq!(r["overrides"]["segment.ms"], "9000", "{r}");
    let r = cli(
        b,
        &[
            "topic",
            "alter-config",
            t,
            "--delete",
            "segment.ms",
            "--json",
        ],
        b"",
    )
    .ok()
    .json();
    assert_eq!(
        r["overrides"],
        serde_json::json!({"retention.ms": "5000"}),
        "{r}"
    );
    let d = cli(b, &["topic", "describe", t, "--json"], b"").ok().json();
    assert_eq!(d["configs"]["segment.ms"]["source"], "default", "{d}");

    // The broker's reason reaches the user, with the key and the value.
    let bad = cli(
        b,
        &["topic", "alter-config", t, "--set", "retention.ms=soon"],
        b"",
    );
    assert_eq!(bad.code, 1, "{}", bad.stderr);
    assert!(
        bad.stderr.contains("retention.ms") && bad.stderr.contains("soon"),
        "{}",
        bad.stderr
    );
    let missing = cli(
        b,
        &[
            "topic",
            "alter-config",
            "no-such-topic",
            "--set",
            "retention.ms=1",
        ],
        b"",
    );
    assert_eq!(missing.code, 3, "{}", missing.stderr);
    assert_eq!(cli(b, &["topic", "alter-config", t], b"").code, 2);
}

#[test]
fn cli_produce_with_keys_and_headers_is_read_back_by_kcat() {
    let broker = Broker::start();
    let b = &broker.bootstrap();
    let t = &topic_name("cli-produce");
    let p = cli(
        b,
        &[
            "produce",
            t,
            "-K",
            ":",
            "-H",
            "source=cli",
            "-H",
            "n=1",
            "--json",
        ],
        b"alice:hello\nbob:world\nalice:again:with colon\n",
    )
    .ok();
    assert_eq!(p.json()["delivered"], 3, "{}", p.stdout);
    assert!(p.stderr.contains("produced 3 records"), "{}", p.stderr);
    let out = kcat(
        &[
            "-b",
            b,
            "-t",
            t,
            "-C",
            "-o",
            "beginning",
            "-e",
            "-q",
            "-f",
            "%o %k=%s %h\n",
        ],
        b"",
    );
    assert_eq!(
        out.stdout,
        "0 alice=hello source=cli,n=1\n1 bob=world source=cli,n=1\n2 alice=again:with colon source=cli,n=1\n"
    );
    // A line without the separator stops the run with its line number.
    let bad = cli(b, &["produce", t, "-K", ":"], b"k:v\nno separator here\n");
    assert_eq!(bad.code, 1);
    assert!(bad.stderr.contains("line 2"), "{}", bad.stderr);
}

#[test]
fn kcat_produce_is_consumed_by_the_cli_as_text_and_json() {
    let broker = Broker::start();
    let b = &broker.bootstrap();
    let t = &topic_name("cli-consume");
    kcat(
        &["-b", b, "-t", t, "-P", "-K", ":", "-H", "h1=v1"],
        b"k1:one\nk2:two\n",
    );
    let text = cli(
        b,
        &[
            "consume",
            t,
            "--from",
            "beginning",
            "-e",
            "--print-key",
            "--key-separator",
            "=",
        ],
        b"",
    )
    .ok();
    assert_eq!(text.stdout, "k1=one\nk2=two\n");
    assert!(
        text.stderr.contains("consumed 2 records"),
        "{}",
        text.stderr
    );
    let json = cli(
        b,
        &[
            "consume",
            t,
            "--from",
            "beginning",
            "-e",
            "-f",
            "json",
            "-q",
        ],
        b"",
    )
    .ok();
    let lines = json.json_lines();
    assert_eq!(lines.len(), 2, "{}", json.stdout);
    for (i, (k, v)) in [("k1", "one"), ("k2", "two")].iter().enumerate() {
        let m = &lines[i];
        assert_eq!(m["topic"], t.as_str());
        assert_eq!(m["partition"], 0);
        assert_eq!(m["offset"], i as i64);
        assert_eq!(m["key"], *k);
        assert_eq!(m["value"], *v);
        assert_eq!(
            m["headers"],
            serde_json::json!([{"key": "h1", "value": "v1"}])
        );
        let ts = m["timestamp"].as_i64().unwrap();
        assert!(
            (runnel::time::now_ms() - ts).abs() < 600_000,
            "timestamp {ts}"
        );
    }
    assert!(json.stderr.is_empty(), "-q: {}", json.stderr);
}

#[test]
fn consume_starts_at_offset_tail_and_timestamp_and_stops_by_count_or_idle() {
    let broker = Broker::start();
    let b = &broker.bootstrap();
    let t = &topic_name("cli-from");
    create_topic_blocking(b, t, 1);
    // Ten records with timestamps 1000, 2000, ..., 10000.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let producer = producer(b, &[]);
    rt.block_on(async {
        for i in 0..10i64 {
            let v = format!("v{i}");
            producer
                .send(
                    FutureRecord::<(), _>::to(t)
                        .payload(&v)
                        .timestamp((i + 1) * 1000),
                    CLIENT_TIMEOUT,
                )
                .await
                .expect("produce");
        }
    });
    let values = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["consume", t.as_str(), "-q"];
        all.extend_from_slice(args);
        cli(b, &all, b"")
            .ok()
            .stdout
            .lines()
            .map(str::to_string)
            .collect()
    };
    assert_eq!(values(&["--from", "7", "-e"]), ["v7", "v8", "v9"]);
    assert_eq!(values(&["--from", "-2", "-e"]), ["v8", "v9"]);
    assert_eq!(values(&["--from-timestamp", "8500", "-e"]), ["v8", "v9"]);
    assert_eq!(
        values(&["--from", "beginning", "-n", "4"]),
        ["v0", "v1", "v2", "v3"]
    );
    // From the end with nothing arriving: the idle timeout ends the run.
    let idle = cli(b, &["consume", t, "--idle-timeout-ms", "500"], b"").ok();
    assert_eq!(idle.stdout, "");
    assert!(idle.elapsed < Duration::from_secs(15), "{:?}", idle.elapsed);
    let bad = cli(b, &["consume", t, "--from", "yesterday"], b"");
    assert_eq!(bad.code, 2, "{}", bad.stderr);
}

#[test]
fn group_consume_commits_and_group_describe_shows_members_and_lag() {
    let broker = Broker::start();
    let b = &broker.bootstrap();
    let t = &topic_name("cli-group");
    let g = &topic_name("cli-g");
    cli(b, &["topic", "create", t, "-p", "2"], b"").ok();
    let lines: String = (0..10).map(|i| format!("k{i}:v{i}\n")).collect();
    cli(b, &["produce", t, "-K", ":"], lines.as_bytes()).ok();

    let first = cli(
        b,
        &[
            "consume",
            t,
            "-g",
            g,
            "--from",
            "beginning",
            "-n",
            "4",
            "-q",
        ],
        b"",
    )
    .ok();
    assert_eq!(first.stdout.lines().count(), 4);
    // Partitions the group committed on are listed (a partition it never read has
    // no committed offset, so no lag to show, like kafka-consumer-groups).
    let d = cli(b, &["group", "describe", g, "--json"], b"").ok().json();
    let parts = d["partitions"].as_array().unwrap();
    let committed: i64 = parts
        .iter()
        .map(|p| p["committed_offset"].as_i64().unwrap())
        .sum();
    assert_eq!(committed, 4, "{d}");
    let lag: i64 = parts
        .iter()
        .map(|p| p["log_end_offset"].as_i64().unwrap() - p["committed_offset"].as_i64().unwrap())
        .sum();
    assert_eq!(d["total_lag"], lag, "{d}");
    for p in parts {
        assert_eq!(
            p["lag"].as_i64().unwrap(),
            p["log_end_offset"].as_i64().unwrap() - p["committed_offset"].as_i64().unwrap()
        );
    }
    let list = cli(b, &["group", "list", "--json"], b"").ok().json();
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|x| x["group"] == g.as_str()),
        "{list}"
    );

    // The rest, exactly once, then no lag.
    let rest = cli(
        b,
        &["consume", t, "-g", g, "--from", "beginning", "-e", "-q"],
        b"",
    )
    .ok();
    let mut seen: Vec<&str> = first.stdout.lines().chain(rest.stdout.lines()).collect();
    seen.sort();
    let mut want: Vec<String> = (0..10).map(|i| format!("v{i}")).collect();
    want.sort();
    assert_eq!(seen, want);
    let d = cli(b, &["group", "describe", g], b"").ok();
    assert!(d.stdout.contains("total lag 0"), "{}", d.stdout);
    let d = cli(b, &["group", "describe", g, "--json"], b"").ok().json();
    let parts = d["partitions"].as_array().unwrap();
    let committed: i64 = parts
        .iter()
        .map(|p| p["committed_offset"].as_i64().unwrap())
        .sum();
    assert_eq!((parts.len(), committed), (2, 10), "{d}");

    // A live member shows up with its assignment.
    let mut member = Command::new(runnel_bin())
        .args([
            "consume",
            t,
            "-g",
            g,
            "-q",
            "--idle-timeout-ms",
            "25000",
            "-b",
            b,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let described = loop {
        let d = cli(b, &["group", "describe", g, "--json"], b"").ok().json();
        if d["state"] == "Stable" && d["members"].as_array().is_some_and(|m| m.len() == 1) {
            break d;
        }
        assert!(Instant::now() < deadline, "member never joined: {d}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = member.kill();
    let _ = member.wait();
    let assignment = described["members"][0]["assignment"].as_array().unwrap();
    assert_eq!(assignment.len(), 2, "{described}");
    assert_eq!(described["members"][0]["client_id"], "runnel-cli");
    assert!(
        described["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["owner"].is_string()),
        "{described}"
    );
    assert_eq!(cli(b, &["group", "describe", "no-such-group"], b"").code, 3);
}

#[test]
fn cluster_info_names_the_broker_and_controller() {
    let broker = Broker::start();
    let b = &broker.bootstrap();
    let info = cli(b, &["cluster", "info", "--json"], b"").ok().json();
    assert_eq!(info["brokers"][0]["port"], broker.port() as i64, "{info}");
    assert_eq!(info["brokers"][0]["host"], "127.0.0.1");
    assert_eq!(info["controller_id"], 0);
    assert!(info["cluster_id"].is_string(), "{info}");
    let table = cli(b, &["cluster", "info"], b"").ok().stdout;
    assert!(table.contains(&broker.port().to_string()), "{table}");
}

#[test]
fn unreachable_broker_fails_quickly_with_exit_code_1() {
    // A port nothing listens on: bind, read the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let b = &format!("127.0.0.1:{port}");
    for args in [
        &["topic", "list"][..],
        &["topic", "create", "x"],
        &["topic", "alter-config", "x", "--set", "a=b"],
        &["produce", "x"],
        &["consume", "x", "-e"],
        &["group", "list"],
        &["group", "describe", "g"],
        &["cluster", "info"],
    ] {
        let r = cli(b, args, b"line\n");
        assert_eq!(r.code, 1, "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.contains("cannot reach a broker"),
            "{args:?}: {}",
            r.stderr
        );
        assert!(
            r.elapsed < Duration::from_secs(5),
            "{args:?} took {:?}",
            r.elapsed
        );
    }
}

#[test]
fn unknown_topics_exit_3_and_are_not_created() {
    let broker = Broker::start_with(BrokerOptions::default().auto_create_topics(false));
    let b = &broker.bootstrap();
    for args in [
        &["consume", "missing", "-e"][..],
        &["produce", "missing"],
        &["topic", "describe", "missing"],
        &["topic", "delete", "missing"],
    ] {
        let r = cli(b, args, b"x\n");
        assert_eq!(r.code, 3, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains("missing"), "{args:?}: {}", r.stderr);
    }
    let list = cli(b, &["topic", "list", "--json"], b"").ok().json();
    assert_eq!(list, serde_json::json!([]));
    // Usage errors are 2 (clap's code).
    assert_eq!(cli(b, &["topic", "frobnicate"], b"").code, 2);
}

/// `runnel serve --config FILE --print-config` with `toml`: (exit code, stdout, stderr).
fn serve_with_settings(toml: &str, extra: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runnel.toml");
    std::fs::write(&path, toml).unwrap();
    let mut args = vec![
        "serve",
        "--config",
        path.to_str().unwrap(),
        "--print-config",
    ];
    args.extend_from_slice(extra);
    run_program(runnel_bin().to_str().unwrap(), &args, b"")
}

#[test]
fn invalid_settings_are_refused_with_the_key_the_value_and_why() {
    for (toml, key, value, why) in [
        (
            "\"num.partitions\" = \"many\"",
            "num.partitions",
            "many",
            "invalid digit",
        ),
        (
            "\"num.partitions\" = 0",
            "num.partitions",
            "0",
            "between 1 and",
        ),
        ("cores = 0", "cores", "0", "at least 1"),
        (
            "\"auto.create.topics.enable\" = \"yes\"",
            "auto.create.topics.enable",
            "yes",
            "true",
        ),
        (
            "\"log.level\" = \"info,runnel=loud\"",
            "log.level",
            "loud",
            "expected",
        ),
        (
            "\"log.format\" = \"xml\"",
            "log.format",
            "xml",
            "text or json",
        ),
        ("\"io.memory.mib\" = 0", "io.memory.mib", "0", "at least 1"),
        (
            "\"message.max.bytes\" = 2000\n\"socket.request.max.bytes\" = 1024",
            "message.max.bytes",
            "2000",
            "exceeds",
        ),
        (
            "\"num.partitons\" = 4",
            "num.partitons",
            "",
            "unknown setting",
        ),
        (
            "\"group.max.session.timeout.ms\" = 5000",
            "group.max.session.timeout.ms",
            "5000",
            "below",
        ),
        (
            "\"offsets.topic.num.partitions\" = 0",
            "offsets.topic.num.partitions",
            "0",
            "between 1 and",
        ),
        (
            "\"log.retention.check.interval.ms\" = 0",
            "log.retention.check.interval.ms",
            "0",
            "at least 100",
        ),
    ] {
        let r = serve_with_settings(toml, &[]);
        assert_eq!(r.code, 2, "{toml}: {}", r.stderr);
        for part in [key, value, why] {
            assert!(
                r.stderr.contains(part),
                "{toml}: {part:?} missing in: {}",
                r.stderr
            );
        }
    }
    // Valid: the file is applied, and flags and RUNNEL_* variables override it.
    let ok = serve_with_settings("\"num.partitions\" = 4\n\"log.level\" = \"info,runnel::group=debug\"\n\"log.format\" = \"json\"", &["--num-partitions", "6"]).ok();
    assert!(
        ok.stdout.contains("\"num.partitions\" = 6"),
        "{}",
        ok.stdout
    );
    assert!(
        ok.stdout
            .contains("\"log.level\" = \"info,runnel::group=debug\""),
        "{}",
        ok.stdout
    );
    assert!(
        ok.stdout.contains("\"log.format\" = \"json\""),
        "{}",
        ok.stdout
    );
}

#[test]
fn json_logs_are_one_object_per_line_with_per_module_levels() {
    let broker = Broker::start_with(BrokerOptions {
        extra_args: vec![
            "--log-format".into(),
            "json".into(),
            "--log".into(),
            "warn,runnel::broker=info".into(),
        ],
        ..BrokerOptions::default()
    });
    assert_broker_serves(&broker.bootstrap());
    let log = broker.log_tail(64 * 1024);
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    // "broker ready" is logged at info by runnel::broker.
    assert!(
        lines.iter().any(|l| l["level"] == "INFO"
            && l["target"]
                .as_str()
                .is_some_and(|t| t.starts_with("runnel::broker"))),
        "{log}"
    );
    assert!(
        lines.iter().all(|l| l["level"] != "INFO"
            || l["target"]
                .as_str()
                .is_some_and(|t| t.starts_with("runnel::broker"))),
        "info lines outside runnel::broker: {log}"
    );
}

#[test]
fn print_config_lists_every_setting_and_reads_back_as_a_settings_file() {
    let first = serve_with_settings("", &["--num-partitions", "3", "--log", "warn"]).ok();
    for (key, _) in runnel::config::FILE_KEYS {
        assert!(
            first.stdout.contains(&format!("\"{key}\" =")),
            "{key} missing:\n{}",
            first.stdout
        );
    }
    let again = serve_with_settings(&first.stdout, &[]).ok();
    assert_eq!(again.stdout, first.stdout);
}

#[test]
fn session_timeouts_outside_the_configured_range_are_refused() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let broker = Broker::start_with(BrokerOptions {
        extra_args: vec!["--group-min-session-timeout-ms".into(), "7000".into()],
        ..BrokerOptions::default()
    });
    let b = &broker.bootstrap();
    let t = &topic_name("cli-session");
    create_topic_blocking(b, t, 1);
    let join = |session_ms: &str| -> Result<(), String> {
        let c: BaseConsumer = consumer(
            b,
            &[
                ("group.id", &topic_name("g")),
                ("session.timeout.ms", session_ms),
            ],
        );
        c.subscribe(&[t]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            match c.poll(Duration::from_millis(100)) {
                Some(Err(e)) if !matches!(e, rdkafka::error::KafkaError::PartitionEOF(_)) => {
                    return Err(e.to_string())
                }
                _ if c.assignment().unwrap().count() > 0 => return Ok(()),
                _ => {}
            }
        }
        Err("neither joined nor refused".into())
    };
    let refused = join("6500").unwrap_err();
    assert!(refused.contains("session timeout"), "{refused}");
    join("8000").unwrap();
}

#[test]
fn dump_log_lists_every_batch_of_a_stopped_broker_and_stops_at_a_torn_tail() {
    let mut broker = Broker::start();
    let b = &broker.bootstrap();
    let t = &topic_name("cli-dump");
    let lines: String = (0..50).map(|i| format!("line {i}\n")).collect();
    cli(b, &["produce", t], lines.as_bytes()).ok();
    cli(b, &["produce", t], b"one more\n").ok();
    assert!(broker.terminate(Duration::from_secs(20)), "clean stop");
    let batches = dump_partition(broker.data_dir(), t, 0);
    assert!(batches.len() >= 2, "{batches:?}");
    assert_eq!(batches[0].0, 0);
    for w in batches.windows(2) {
        assert_eq!(w[1].0, w[0].1 + 1, "offsets dense: {batches:?}");
    }
    assert_eq!(batches.last().unwrap().1, 50);
    // Flip a byte inside the last batch: the walk stops before it, and says why.
    let dir = broker.data_dir().join("topics").join(format!("{t}-0"));
    let seg = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "log"))
        .unwrap();
    let mut data = std::fs::read(&seg).unwrap();
    // Byte length of all batches, from the JSON listing.
    let listing = run_program(
        runnel_bin().to_str().unwrap(),
        &["dump-log", "--json", dir.to_str().unwrap()],
        b"",
    )
    .ok();
    let end: usize = listing.json()["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["bytes"].as_u64().unwrap() as usize)
        .sum();
    data[end - 3] ^= 0xff;
    std::fs::write(&seg, &data).unwrap();
    let out = run_program(
        runnel_bin().to_str().unwrap(),
        &["dump-log", dir.to_str().unwrap()],
        b"",
    )
    .ok();
    assert_eq!(
        out.stdout.lines().count(),
        batches.len() - 1,
        "{}",
        out.stdout
    );
    assert!(out.stderr.contains("CRC32C mismatch"), "{}", out.stderr);
}

/// A second broker started on a port the first one holds must refuse to start: the
/// listeners use SO_REUSEPORT, and without a check the two would silently split the
/// clients' connections between them.
#[test]
fn serve_refuses_a_port_another_broker_listens_on() {
    let first = Broker::start();
    let data = tempfile::tempdir().unwrap();
    let second = run_program(
        runnel_bin().to_str().unwrap(),
        &[
            "serve",
            "--listen",
            &first.bootstrap(),
            "--data-dir",
            data.path().to_str().unwrap(),
            "--cores",
            "1",
            "--admin-listen",
            "off",
        ],
        b"",
    );
    assert_ne!(second.code, 0, "second broker started: {}", second.stdout);
    assert!(
        second.stderr.contains("already in use"),
        "stderr: {}",
        second.stderr
    );
    assert!(!second.stdout.contains("runnel: ready"));
    assert_broker_serves(&first.bootstrap());
}
