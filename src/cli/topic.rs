//! `runnel topic create|list|describe|delete|alter-config`.

use clap::{Args, Subcommand};
use futures::executor::block_on;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::{DescribeConfigsRequest, IncrementalAlterConfigsRequest};
use kafka_protocol::protocol::StrBytes;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{Client, DefaultClientContext};
use rdkafka::metadata::Metadata;
use rdkafka::types::RDKafkaErrorCode;
use serde_json::json;

use super::{print_json, print_table, split_kv, wire, CliError, CliResult, ClientArgs};

#[derive(Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create(CreateArgs),
    /// List topics (internal topics such as __consumer_offsets with --all).
    List(ListArgs),
    /// Partitions (leader, replicas, offsets) and configuration of a topic.
    Describe(DescribeArgs),
    /// Delete topics.
    Delete(DeleteArgs),
    /// Set or remove topic configs (other overrides are kept).
    AlterConfig(AlterArgs),
}

#[derive(Args)]
pub struct CreateArgs {
    pub topic: String,
    #[arg(short, long, default_value_t = 1)]
    pub partitions: i32,
    #[arg(short, long, default_value_t = 1)]
    pub replication_factor: i32,
    /// Topic config (repeatable), e.g. --config retention.ms=3600000.
    #[arg(short, long, value_name = "KEY=VALUE")]
    pub config: Vec<String>,
    /// Succeed when the topic already exists.
    #[arg(long)]
    pub if_not_exists: bool,
    #[command(flatten)]
    pub client: ClientArgs,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct ListArgs {
    /// Include internal topics (names starting with "__").
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub client: ClientArgs,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct DescribeArgs {
    pub topic: String,
    #[command(flatten)]
    pub client: ClientArgs,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct DeleteArgs {
    #[arg(required = true)]
    pub topics: Vec<String>,
    /// Succeed when a topic does not exist.
    #[arg(long)]
    pub if_exists: bool,
    #[command(flatten)]
    pub client: ClientArgs,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct AlterArgs {
    pub topic: String,
    /// Config to set (repeatable), e.g. --set retention.ms=60000.
    #[arg(long, value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Config override to remove, back to the broker default (repeatable).
    #[arg(long, value_name = "KEY")]
    pub delete: Vec<String>,
    #[command(flatten)]
    pub client: ClientArgs,
    #[arg(long)]
    pub json: bool,
}

pub fn run(cmd: TopicCommand) -> CliResult {
    match cmd {
        TopicCommand::Create(a) => create(a),
        TopicCommand::List(a) => list(a),
        TopicCommand::Describe(a) => describe(a),
        TopicCommand::Delete(a) => delete(a),
        TopicCommand::AlterConfig(a) => alter_config(a),
    }
}

pub fn admin(client: &ClientArgs) -> CliResult<AdminClient<DefaultClientContext>> {
    client.check_reachable()?;
    client
        .client_config()?
        .create()
        .map_err(|e| CliError::error(format!("cannot create admin client: {e}")))
}

fn options(client: &ClientArgs) -> AdminOptions {
    AdminOptions::new()
        .request_timeout(Some(client.timeout()))
        .operation_timeout(Some(client.timeout()))
}

/// Cluster metadata (all topics, or one); errors are bounded by the timeout.
pub fn metadata<C: rdkafka::ClientContext>(
    client: &Client<C>,
    topic: Option<&str>,
    args: &ClientArgs,
) -> CliResult<Metadata> {
    client
        .fetch_metadata(topic, args.timeout())
        .map_err(|e| CliError::kafka("metadata request failed", e))
}

/// Metadata of one topic; NOT_FOUND when the broker does not know it.
pub fn topic_metadata<C: rdkafka::ClientContext>(
    client: &Client<C>,
    topic: &str,
    args: &ClientArgs,
) -> CliResult<Metadata> {
    let md = metadata(client, Some(topic), args)?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| CliError::not_found(format!("unknown topic '{topic}'")))?;
    match t.error().map(RDKafkaErrorCode::from) {
        None => Ok(md),
        Some(RDKafkaErrorCode::UnknownTopicOrPartition) | Some(RDKafkaErrorCode::UnknownTopic) => {
            Err(CliError::not_found(format!("unknown topic '{topic}'")))
        }
        Some(code) => Err(CliError::error(format!("topic '{topic}': {code}"))),
    }
}

fn create(a: CreateArgs) -> CliResult {
    if a.partitions < 1 {
        return Err(CliError::usage("--partitions must be at least 1"));
    }
    let admin = admin(&a.client)?;
    let mut topic = NewTopic::new(
        &a.topic,
        a.partitions,
        TopicReplication::Fixed(a.replication_factor),
    );
    for kv in &a.config {
        let (k, v) = split_kv(kv, "--config")?;
        topic = topic.set(k, v);
    }
    let results = block_on(admin.create_topics([&topic], &options(&a.client)))
        .map_err(|e| CliError::kafka("create topic", e))?;
    let mut created = true;
    for r in results {
        match r {
            Ok(_) => {}
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) if a.if_not_exists => created = false,
            Err((name, code)) => {
                return Err(CliError::error(format!("create topic '{name}': {code}")))
            }
        }
    }
    if a.json {
        print_json(&json!({"topic": a.topic, "created": created, "partitions": a.partitions}));
    } else if created {
        println!(
            "created topic {} with {} partition(s)",
            a.topic, a.partitions
        );
    } else {
        println!("topic {} already exists", a.topic);
    }
    Ok(())
}

fn list(a: ListArgs) -> CliResult {
    let admin = admin(&a.client)?;
    let md = metadata(admin.inner(), None, &a.client)?;
    let mut topics: Vec<(String, usize)> = md
        .topics()
        .iter()
        .filter(|t| a.all || !t.name().starts_with("__"))
        .map(|t| (t.name().to_string(), t.partitions().len()))
        .collect();
    topics.sort();
    if a.json {
        let v: Vec<_> = topics
            .iter()
            .map(|(n, p)| json!({"topic": n, "partitions": p}))
            .collect();
        print_json(&json!(v));
    } else {
        let rows: Vec<Vec<String>> = topics
            .into_iter()
            .map(|(n, p)| vec![n, p.to_string()])
            .collect();
        print_table(&["TOPIC", "PARTITIONS"], &rows);
    }
    Ok(())
}

/// One topic config as DescribeConfigs reports it.
struct ConfigEntry {
    name: String,
    value: Option<String>,
    source: &'static str,
}

/// DescribeConfigs v1+ `config_source`.
fn source_name(source: i8) -> &'static str {
    match source {
        1 => "topic",
        2 => "dynamic-broker",
        3 => "dynamic-default-broker",
        4 => "broker",
        5 => "default",
        _ => "unknown",
    }
}

const RESOURCE_TOPIC: i8 = 2;

/// A topic's configs (DescribeConfigs v1, over [`super::wire`]: rdkafka 0.39 hides
/// the per-resource error, so an unknown topic would look like one without configs).
fn describe_topic_configs(topic: &str, args: &ClientArgs) -> CliResult<Vec<ConfigEntry>> {
    let req =
        DescribeConfigsRequest::default().with_resources(vec![DescribeConfigsResource::default()
            .with_resource_type(RESOURCE_TOPIC)
            .with_resource_name(StrBytes::from_string(topic.to_string()))
            .with_configuration_keys(None)]);
    let resp = wire::call(args, &req, 1)?;
    let r = resp
        .results
        .into_iter()
        .next()
        .ok_or_else(|| CliError::error("describe configs: empty response"))?;
    wire::check(
        r.error_code,
        r.error_message.as_ref(),
        &format!("describe configs of '{topic}'"),
    )?;
    let mut entries: Vec<ConfigEntry> = r
        .configs
        .into_iter()
        .map(|c| ConfigEntry {
            name: c.name.to_string(),
            value: c.value.map(|v| v.to_string()),
            source: source_name(c.config_source),
        })
        .collect();
    entries.sort_by(|x, y| x.name.cmp(&y.name));
    Ok(entries)
}

fn describe(a: DescribeArgs) -> CliResult {
    let admin = admin(&a.client)?;
    let md = topic_metadata(admin.inner(), &a.topic, &a.client)?;
    let t = &md.topics()[0];
    let mut partitions = Vec::new();
    for p in t.partitions() {
        let (low, high) = admin
            .inner()
            .fetch_watermarks(&a.topic, p.id(), a.client.timeout())
            .map_err(|e| CliError::kafka("list offsets", e))?;
        partitions.push((
            p.id(),
            p.leader(),
            p.replicas().to_vec(),
            p.isr().to_vec(),
            low,
            high,
        ));
    }
    partitions.sort_by_key(|p| p.0);
    let entries = describe_topic_configs(&a.topic, &a.client)?;
    let ids = |v: &[i32]| {
        v.iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    if a.json {
        let parts: Vec<_> = partitions
            .iter()
            .map(|(id, leader, replicas, isr, low, high)| {
                json!({"partition": id, "leader": leader, "replicas": replicas, "isr": isr,
                       "log_start_offset": low, "log_end_offset": high, "records": high - low})
            })
            .collect();
        let cfg: serde_json::Map<String, serde_json::Value> = entries
            .iter()
            .map(|e| {
                (
                    e.name.clone(),
                    json!({"value": e.value, "source": e.source}),
                )
            })
            .collect();
        print_json(&json!({"topic": a.topic, "partitions": parts, "configs": cfg}));
    } else {
        println!("topic {}: {} partition(s)\n", a.topic, partitions.len());
        let rows: Vec<Vec<String>> = partitions
            .iter()
            .map(|(id, leader, replicas, isr, low, high)| {
                vec![
                    id.to_string(),
                    leader.to_string(),
                    ids(replicas),
                    ids(isr),
                    low.to_string(),
                    high.to_string(),
                    (high - low).to_string(),
                ]
            })
            .collect();
        print_table(
            &[
                "PARTITION",
                "LEADER",
                "REPLICAS",
                "ISR",
                "LOG-START",
                "LOG-END",
                "RECORDS",
            ],
            &rows,
        );
        println!();
        let rows: Vec<Vec<String>> = entries
            .iter()
            .map(|e| {
                vec![
                    e.name.clone(),
                    e.value.clone().unwrap_or_default(),
                    e.source.to_string(),
                ]
            })
            .collect();
        print_table(&["CONFIG", "VALUE", "SOURCE"], &rows);
    }
    Ok(())
}

fn delete(a: DeleteArgs) -> CliResult {
    let admin = admin(&a.client)?;
    let names: Vec<&str> = a.topics.iter().map(String::as_str).collect();
    let results = block_on(admin.delete_topics(&names, &options(&a.client)))
        .map_err(|e| CliError::kafka("delete topics", e))?;
    let mut deleted = Vec::new();
    let mut missing = Vec::new();
    let mut failed = Vec::new();
    for r in results {
        match r {
            Ok(name) => deleted.push(name),
            Err((name, RDKafkaErrorCode::UnknownTopicOrPartition)) => missing.push(name),
            Err((name, code)) => failed.push(format!("{name}: {code}")),
        }
    }
    if a.json {
        print_json(&json!({"deleted": deleted, "not_found": missing, "failed": failed}));
    } else {
        for name in &deleted {
            println!("deleted topic {name}");
        }
    }
    if !failed.is_empty() {
        return Err(CliError::error(format!(
            "delete failed: {}",
            failed.join("; ")
        )));
    }
    if !missing.is_empty() && !a.if_exists {
        return Err(CliError::not_found(format!(
            "unknown topic(s): {}",
            missing.join(", ")
        )));
    }
    Ok(())
}

fn alter_config(a: AlterArgs) -> CliResult {
    if a.set.is_empty() && a.delete.is_empty() {
        return Err(CliError::usage(
            "alter-config needs --set KEY=VALUE or --delete KEY",
        ));
    }
    a.client.check_reachable()?;
    // IncrementalAlterConfigs v0: SET (0) and DELETE (1) leave other overrides alone.
    let mut configs = Vec::new();
    for kv in &a.set {
        let (k, v) = split_kv(kv, "--set")?;
        configs.push(
            AlterableConfig::default()
                .with_name(StrBytes::from_string(k.to_string()))
                .with_config_operation(0)
                .with_value(Some(StrBytes::from_string(v.to_string()))),
        );
    }
    for k in &a.delete {
        configs.push(
            AlterableConfig::default()
                .with_name(StrBytes::from_string(k.clone()))
                .with_config_operation(1),
        );
    }
    let req = IncrementalAlterConfigsRequest::default().with_resources(vec![
        AlterConfigsResource::default()
            .with_resource_type(RESOURCE_TOPIC)
            .with_resource_name(StrBytes::from_string(a.topic.clone()))
            .with_configs(configs),
    ]);
    let resp = wire::call(&a.client, &req, 0)?;
    for r in &resp.responses {
        wire::check(
            r.error_code,
            r.error_message.as_ref(),
            &format!("alter configs of '{}'", a.topic),
        )?;
    }
    let overrides: Vec<(String, String)> = describe_topic_configs(&a.topic, &a.client)?
        .into_iter()
        .filter(|e| e.source == "topic")
        .map(|e| (e.name, e.value.unwrap_or_default()))
        .collect();
    if a.json {
        let m: serde_json::Map<String, serde_json::Value> = overrides
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        print_json(&json!({"topic": a.topic, "overrides": m}));
    } else {
        println!("updated topic {}; its overrides now:", a.topic);
        let rows: Vec<Vec<String>> = overrides.into_iter().map(|(k, v)| vec![k, v]).collect();
        print_table(&["CONFIG", "VALUE"], &rows);
    }
    Ok(())
}
