//! A cluster broker's identity, against the real binary on 127.0.0.1: the voter list a
//! data dir was written under, and the node id a live broker holds. Both mistakes must
//! stop the new process at start (exit 2, a message saying what to do) before it prints
//! ready, while the cluster keeps serving; the right restart must still work.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use kafka_protocol::messages::MetadataRequest;

/// How long a process that must refuse to start may take to exit. A second process
/// with a live node id is refused once refusals outlast the session timeout (3 s), after
/// a start that takes seconds on a loaded box.
const REFUSAL_MAX: Duration = Duration::from_secs(30);

/// Runs `runnel serve ARGS` until it exits, at most `REFUSAL_MAX` (then SIGKILL: `code`
/// is `None`).
fn serve_to_exit(args: &[String]) -> Exit {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    serve_to_exit_within(&args, REFUSAL_MAX, |_| {})
}

/// The start was refused: exit 2, never ready, and stderr says each of `needles`.
fn assert_refused_with_exit_2(exit: &Exit, needles: &[&str]) {
    let context = format!(
        "code {:?} after {:?}\nstdout: {}\nstderr: {}",
        exit.code, exit.elapsed, exit.stdout, exit.stderr
    );
    assert_eq!(exit.code, Some(2), "{context}");
    assert!(!exit.stdout.contains("runnel: ready"), "{context}");
    for needle in needles {
        assert!(
            exit.stderr.contains(needle),
            "stderr lacks {needle:?}: {context}"
        );
    }
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Every topic `bootstrap` knows (Metadata with a null topic list).
fn topics(bootstrap: &str) -> BTreeSet<String> {
    let mut wire = Wire::connect(bootstrap);
    let resp = wire.call(&MetadataRequest::default().with_topics(None), 12);
    resp.topics
        .iter()
        .filter_map(|t| t.name.as_ref().map(|n| n.to_string()))
        .collect()
}

fn voters(cluster: &Cluster) -> String {
    cluster
        .cluster_ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}@127.0.0.1:{p}", i + 1))
        .collect::<Vec<_>>()
        .join(",")
}

fn cluster_args(id: i32, voters: &str) -> Vec<String> {
    args(&[
        "--node-id",
        &id.to_string(),
        "--controller-quorum-voters",
        voters,
    ])
}

/// A broker restarted with a voter list naming only itself became its own metadata
/// leader and created a topic the rest never knew. The Raft log stores the voter set it
/// was written under; a start with another list is refused, naming both.
#[test]
fn a_restart_with_another_voter_list_exits_2_and_the_right_list_rejoins() {
    let mut cluster = Cluster::start(3, BrokerOptions::default());
    cluster.wait_registered();
    let all = voters(&cluster);
    let topic = topic_name("before");
    create_replicated(&cluster.bootstrap_all(), &topic, 1, 3).expect("create");
    let b1 = cluster.node(1).bootstrap();
    let b2 = cluster.node(2).bootstrap();
    let want: BTreeSet<String> = [topic.clone()].into();
    wait_for("broker 3 has the topic", CLUSTER_TIMEOUT, || {
        (topics(&cluster.brokers[2].bootstrap()) == want).then_some(())
    });

    assert!(
        cluster.node(3).terminate(Duration::from_secs(20)),
        "clean stop"
    );
    let own_port = cluster.cluster_ports[2];
    let alone = format!("3@127.0.0.1:{own_port}");
    let data = cluster.node(3).data_dir().to_str().unwrap().to_string();
    let listen = cluster.node(3).bootstrap();
    let mut bad = args(&["--listen", &listen, "--data-dir", &data, "--cores", "1"]);
    bad.extend(cluster_args(3, &alone));
    let exit = serve_to_exit(&bad);
    assert_refused_with_exit_2(
        &exit,
        &[
            "controller.quorum.voters names node ids [3]",
            "voters are [1, 2, 3]",
            "Restart with the original",
        ],
    );

    // The two others serve, and nothing was created behind their back.
    assert_eq!(topics(&b1), want);
    assert_eq!(topics(&b2), want);
    assert_broker_serves(&b1);

    // The original list: it rejoins, catches up and serves.
    cluster.node(3).restart_with_args(cluster_args(3, &all));
    cluster.wait_registered();
    let b3 = cluster.node(3).bootstrap();
    wait_for("broker 3 catches up", CLUSTER_TIMEOUT, || {
        let seen = topics(&b3);
        (seen.contains(&topic) && seen == topics(&b1)).then_some(())
    });
    assert_broker_serves(&b3);
}

/// A second process started with the node id of a live broker ran and said ready. Here
/// it has its own data dir, Kafka port and cluster port, and the same voter list, so it
/// reaches the quorum: it must be refused as a duplicate (Kafka's
/// DUPLICATE_BROKER_REGISTRATION) and exit 2, and the live broker 2 keep serving. A
/// restart of broker 2 after SIGKILL still registers: the dead process stops counting
/// once its connections close (at worst after the 3 s session timeout).
#[test]
fn a_second_process_with_a_live_node_id_exits_2_and_a_crashed_one_restarts() {
    let mut cluster = Cluster::start(3, BrokerOptions::default());
    cluster.wait_registered();
    let all = voters(&cluster);
    let b2 = cluster.node(2).bootstrap();
    let registered_2 = |bootstrap: &str| {
        raw_cluster_view(bootstrap)
            .1
            .into_iter()
            .find(|(id, _, _)| *id == 2)
            .map(|(_, host, port)| format!("{host}:{port}"))
    };
    assert_eq!(registered_2(&b2), Some(b2.clone()));

    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(2);
    let mut second = args(&[
        "--listen",
        &format!("127.0.0.1:{}", ports[0]),
        "--cluster-listen",
        &format!("127.0.0.1:{}", ports[1]),
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--cores",
        "1",
    ]);
    second.extend(cluster_args(2, &all));
    let exit = serve_to_exit(&second);
    assert_refused_with_exit_2(
        &exit,
        &[
            "node.id 2 is already live in the cluster",
            "another process runs with this id",
        ],
    );

    // On the same host without its own cluster port it cannot even listen: also exit 2,
    // and the message points at a second process of the node id.
    let dir_b = tempfile::tempdir().unwrap();
    let port_b = free_ports(1)[0];
    let mut same_port = args(&[
        "--listen",
        &format!("127.0.0.1:{port_b}"),
        "--data-dir",
        dir_b.path().to_str().unwrap(),
        "--cores",
        "1",
    ]);
    same_port.extend(cluster_args(2, &all));
    let exit = serve_to_exit(&same_port);
    assert_refused_with_exit_2(&exit, &["node.id 2 already runs on this host"]);

    // Broker 2 is still the registered one, and serves.
    assert_eq!(registered_2(&cluster.node(1).bootstrap()), Some(b2.clone()));
    assert_broker_serves(&b2);

    // A crash and a restart on the same data dir: it registers again and serves.
    let started = Instant::now();
    cluster.node(2).restart();
    cluster.wait_registered();
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(30),
        "restart took {took:?} to register"
    );
    assert_eq!(registered_2(&cluster.node(3).bootstrap()), Some(b2.clone()));
    assert_broker_serves(&b2);
}
