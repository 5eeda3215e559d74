//! `runnel cluster info`: cluster id, controller, brokers, topic and partition counts.

use clap::{Args, Subcommand};
use serde_json::json;

use super::topic::{admin, metadata};
use super::{print_json, print_table, CliResult, ClientArgs};

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Cluster id, controller, brokers, and how many topics and partitions there are.
    Info(InfoArgs),
}

#[derive(Args)]
pub struct InfoArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[arg(long)]
    pub json: bool,
}

pub fn run(cmd: ClusterCommand) -> CliResult {
    match cmd {
        ClusterCommand::Info(a) => info(a),
    }
}

fn info(a: InfoArgs) -> CliResult {
    let admin = admin(&a.client)?;
    let client = admin.inner();
    let md = metadata(client, None, &a.client)?;
    let cluster_id = client.fetch_cluster_id(a.client.timeout());
    // SAFETY: the client pointer is valid for the life of `admin`; the call only reads
    // cached metadata (waiting at most the timeout for it).
    let controller = unsafe {
        rdkafka::bindings::rd_kafka_controllerid(
            client.native_ptr(),
            a.client.timeout_ms.min(i32::MAX as u64) as i32,
        )
    };
    let controller = (controller >= 0).then_some(controller);
    let mut brokers: Vec<(i32, String, i32)> = md
        .brokers()
        .iter()
        .map(|b| (b.id(), b.host().to_string(), b.port()))
        .collect();
    brokers.sort();
    let user_topics = md
        .topics()
        .iter()
        .filter(|t| !t.name().starts_with("__"))
        .count();
    let partitions: usize = md.topics().iter().map(|t| t.partitions().len()).sum();
    if a.json {
        let bs: Vec<_> = brokers
            .iter()
            .map(|(id, host, port)| json!({"id": id, "host": host, "port": port}))
            .collect();
        print_json(&json!({
            "cluster_id": cluster_id,
            "controller_id": controller,
            "brokers": bs,
            "topics": user_topics,
            "internal_topics": md.topics().len() - user_topics,
            "partitions": partitions,
        }));
        return Ok(());
    }
    println!(
        "cluster {}  controller {}  {} topic(s) ({} internal), {} partition(s)\n",
        cluster_id.as_deref().unwrap_or("-"),
        controller
            .map(|c| c.to_string())
            .unwrap_or_else(|| "-".into()),
        user_topics,
        md.topics().len() - user_topics,
        partitions
    );
    let rows: Vec<Vec<String>> = brokers
        .into_iter()
        .map(|(id, host, port)| {
            let mark = if Some(id) == controller { "*" } else { "" };
            vec![format!("{id}{mark}"), host, port.to_string()]
        })
        .collect();
    print_table(&["BROKER", "HOST", "PORT"], &rows);
    Ok(())
}
