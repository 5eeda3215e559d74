//! Operator mistakes and unguarded doors, each against the real binary: a second broker
//! on a data dir in use, a locked-memory limit too low for the shards asked for, a stop
//! asked for while starting, the cluster port spoken to by something other than a
//! voter's replica fetcher, the admin port held open by half-sent requests, and logs
//! written to a file.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

/// How long a broker that must refuse to start may take to do so.
const REFUSAL_MAX: Duration = Duration::from_secs(15);

/// Runs `runnel serve ARGS` to its exit (bounded), with `pre_exec` run in the child.
fn serve_to_exit(args: &[&str], pre_exec: Option<fn() -> std::io::Result<()>>) -> Exit {
    serve_to_exit_within(args, REFUSAL_MAX, |cmd| {
        if let Some(f) = pre_exec {
            // SAFETY: the closures passed here only make async-signal-safe system calls.
            unsafe {
                cmd.pre_exec(f);
            }
        }
    })
}

fn produce_values(bootstrap: &str, topic: &str, values: impl Iterator<Item = String>) {
    let mut c = base_config(bootstrap);
    c.set("message.timeout.ms", "15000").set("acks", "all");
    let p: BaseProducer = c.create().unwrap();
    for v in values {
        p.send(BaseRecord::<(), _>::to(topic).payload(&v))
            .expect("enqueue");
    }
    p.flush(CLIENT_TIMEOUT).expect("flush");
}

fn read_values(bootstrap: &str, topic: &str) -> Vec<String> {
    let c = consumer(bootstrap, &[]);
    assign(&c, topic, &[0], rdkafka::Offset::Beginning);
    consume_to_end(&c, &[0], CONSUME_TIMEOUT)
        .iter()
        .map(payload_str)
        .collect()
}

/// Two brokers on one data dir replaced each other's acknowledged records. The second
/// one must exit 2 before it opens anything, naming the process that holds the dir.
#[test]
fn a_second_broker_on_a_data_dir_in_use_exits_2_and_names_the_holder() {
    let mut first = Broker::start();
    let topic = topic_name("owned");
    create_topic_blocking(&first.bootstrap(), &topic, 1);
    let want: Vec<String> = (0..200).map(|i| format!("first-{i}")).collect();
    produce_values(&first.bootstrap(), &topic, want.clone().into_iter());

    let port = free_ports(1)[0].to_string();
    let listen = format!("127.0.0.1:{port}");
    let data = first.data_dir().to_str().unwrap().to_string();
    let second = serve_to_exit(
        &["--listen", &listen, "--data-dir", &data, "--cores", "1"],
        None,
    );
    assert_eq!(
        second.code,
        Some(2),
        "second broker: stdout {} stderr {}",
        second.stdout,
        second.stderr
    );
    assert!(!second.stdout.contains("ready"), "{}", second.stdout);
    assert!(
        second.stderr.contains("in use") && second.stderr.contains(&first.pid().to_string()),
        "stderr does not name the holder (pid {}): {}",
        first.pid(),
        second.stderr
    );
    // Nothing of the first broker's was touched, before or after a restart.
    assert_eq!(read_values(&first.bootstrap(), &topic), want);
    first.restart();
    assert_eq!(read_values(&first.bootstrap(), &topic), want);
}

/// Drops CAP_IPC_LOCK from the bounding set (so the exec'd broker, even as root, is
/// held to RLIMIT_MEMLOCK like any user) and sets the limit to 8 MiB, the common
/// default for users.
fn as_user_with_8_mib_memlock() -> std::io::Result<()> {
    const CAP_IPC_LOCK: libc::c_ulong = 14;
    // SAFETY: plain system calls on this (child) process.
    unsafe {
        if libc::geteuid() == 0 && libc::prctl(libc::PR_CAPBSET_DROP, CAP_IPC_LOCK, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let lim = libc::rlimit {
            rlim_cur: 8 << 20,
            rlim_max: 8 << 20,
        };
        if libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Below glommio's own floor (512 KiB), which it checks even for root.
fn with_64_kib_memlock() -> std::io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: 64 << 10,
        rlim_max: 64 << 10,
    };
    // SAFETY: setrlimit on this (child) process.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// More shards than the locked-memory limit holds used to leave a process that printed
/// nothing, never became ready and ignored SIGTERM. It must exit 1 at once, saying
/// exactly what to raise; a shard count that fits must still start.
#[test]
fn too_little_locked_memory_for_the_shards_exits_1_saying_what_to_raise() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let port = free_ports(1)[0];
    let listen = format!("127.0.0.1:{port}");
    let refused = |cores: &str, limit: fn() -> std::io::Result<()>| {
        let out = serve_to_exit(
            &["--listen", &listen, "--data-dir", dir, "--cores", cores],
            Some(limit),
        );
        assert_eq!(
            out.code,
            Some(1),
            "stdout {} stderr {}",
            out.stdout,
            out.stderr
        );
        assert!(
            out.elapsed < Duration::from_secs(10),
            "took {:?}",
            out.elapsed
        );
        out.stderr
    };
    // 16 shards × 2 MiB = 32 MiB > 8 MiB.
    let stderr = refused("16", as_user_with_8_mib_memlock);
    for want in ["ulimit -l 32768", "LimitMEMLOCK=33554432", "at most 4 fit"] {
        assert!(stderr.contains(want), "no {want:?} in: {stderr}");
    }
    // Even root is held to glommio's floor: the same clear message, not its raw error.
    let stderr = refused("1", with_64_kib_memlock);
    assert!(stderr.contains("ulimit -l"), "{stderr}");
    assert!(!stderr.contains("MemLockLimit"), "{stderr}");

    // Two shards fit in 8 MiB: the broker starts, serves, and stops on SIGTERM.
    let mut cmd = Command::new(runnel_bin());
    cmd.args([
        "serve",
        "--listen",
        &listen,
        "--data-dir",
        dir,
        "--cores",
        "2",
    ])
    .env("RUNNEL_ADMIN_LISTEN", "off")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    // SAFETY: the pre_exec function only makes async-signal-safe system calls.
    unsafe {
        cmd.pre_exec(as_user_with_8_mib_memlock);
    }
    let mut child = cmd.spawn().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert!(line.contains("ready on"), "{line}");
    assert_broker_serves(&listen);
    // SAFETY: kill(2) on our own, unreaped child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "broker ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A stop asked for while the broker starts ends it then, not never.
#[test]
fn sigterm_while_starting_ends_the_process() {
    let data = tempfile::tempdir().unwrap();
    let port = free_ports(1)[0];
    let mut child = Command::new(runnel_bin())
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
            data.path().to_str().unwrap(),
            "--cores",
            "2",
        ])
        .env("RUNNEL_ADMIN_LISTEN", "off")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the broker's first log line: its signal handling is installed by then,
    // and its shards are still starting.
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let _ = std::io::BufRead::read_line(&mut stderr, &mut line);
    // SAFETY: kill(2) on our own, unreaped child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "broker ignored SIGTERM while starting"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // Ended by itself (an exit status), not by the signal's default action.
    assert!(status.code().is_some(), "{status:?}");
}

/// The cluster listener served every Kafka API without authentication: one DeleteTopics
/// frame sent there deleted a topic. Only replica fetchers' requests are served there.
#[test]
fn the_cluster_port_serves_only_replica_fetch_requests() {
    let cluster = Cluster::start(3, BrokerOptions::default());
    cluster.wait_registered();
    let bootstrap = cluster.brokers[0].bootstrap();
    let topic = topic_name("guarded");
    create_replicated(&bootstrap, &topic, 1, 1).expect("create the topic");
    produce_values(&bootstrap, &topic, (0..10).map(|i| format!("v{i}")));
    let cluster_port = cluster.cluster_ports[0];

    // A replica fetcher's hello (frame kind 4), then an admin request.
    let mut s = TcpStream::connect(("127.0.0.1", cluster_port)).unwrap();
    s.write_all(&[0, 0, 0, 1, 4]).unwrap();
    let mut wire = Wire::from_stream(s);
    let req = DeleteTopicsRequest::default().with_topics(vec![
        DeleteTopicState::default().with_name(Some(topic_name_of(&topic)))
    ]);
    let (frame, _) = wire.encode_request(&req, 6);
    wire.send_raw(&frame).unwrap();
    assert!(
        matches!(wire.read_frame(), ReadOutcome::Closed),
        "the cluster port answered a DeleteTopics request"
    );
    // The same request on the client port works, so it was the port that refused it.
    assert_eq!(
        read_values(&bootstrap, &topic).len(),
        10,
        "the topic was deleted"
    );
    let mut client = Wire::connect(&bootstrap);
    let resp: DeleteTopicsResponse = client.call(&req, 6);
    assert_eq!(resp.responses[0].error_code, 0);
    let log = cluster.brokers[0].log_tail(64 << 10);
    assert!(log.contains("API not served on this listener"), "{log}");
}

/// Half-sent HTTP requests held admin connections open forever; each now has a
/// deadline, and the admin port keeps answering while they hang.
#[test]
fn the_admin_port_drops_half_sent_requests_and_keeps_answering() {
    let admin = format!("127.0.0.1:{}", free_ports(1)[0]);
    let mut options = BrokerOptions::default();
    options.extra_args = vec!["--admin-listen".into(), admin.clone()];
    let broker = Broker::start_with(options);
    let mut stuck: Vec<TcpStream> = (0..100)
        .map(|_| {
            let mut s = TcpStream::connect(&admin).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            s
        })
        .collect();
    assert!(http_get_ok(&admin, "/health"), "admin stopped answering");
    // Every half-sent request is closed by the broker within its deadline.
    let deadline = Instant::now() + Duration::from_secs(30);
    for s in &mut stuck {
        s.set_read_timeout(Some(
            deadline.saturating_duration_since(Instant::now()) + Duration::from_millis(1),
        ))
        .unwrap();
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("a half-sent admin request is still open: {other:?}"),
        }
    }
    assert!(http_get_ok(&admin, "/health"));
    drop(broker);
}

fn http_get_ok(addr: &str, path: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.1 200")
}

/// Logs that go to a file carry no terminal colour codes.
#[test]
fn logs_written_to_a_file_have_no_colour_codes() {
    let broker = Broker::start();
    assert_broker_serves(&broker.bootstrap());
    let log = broker.log_tail(1 << 20);
    assert!(log.contains("broker ready"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "escape codes in the log file: {log:?}"
    );
}
