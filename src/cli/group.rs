//! `runnel group list|describe`: consumer groups, their members and assignments, and
//! per partition the committed offset, the log end and the lag.
//!
//! Built from librdkafka's ListGroups + DescribeGroups (`fetch_group_list`), an
//! OffsetFetch as the group (`committed_offsets`) and ListOffsets (`fetch_watermarks`).
//! rdkafka has no "all committed offsets of a group" call, so the OffsetFetch asks for
//! every partition of every non-internal topic plus the members' assignments.

use std::collections::BTreeMap;

use bytes::Bytes;
use clap::{Args, Subcommand};
use kafka_protocol::messages::ConsumerProtocolAssignment;
use kafka_protocol::protocol::Decodable;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::groups::GroupInfo;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;

use super::topic::metadata;
use super::{print_json, print_table, CliError, CliResult, ClientArgs};

#[derive(Subcommand)]
pub enum GroupCommand {
    /// Consumer groups with their state and member count.
    List(ListArgs),
    /// Members, assignments, and committed offset, log end and lag per partition.
    Describe(DescribeArgs),
}

#[derive(Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct DescribeArgs {
    pub group: String,
    #[command(flatten)]
    pub client: ClientArgs,
    #[arg(long)]
    pub json: bool,
}

pub fn run(cmd: GroupCommand) -> CliResult {
    match cmd {
        GroupCommand::List(a) => list(a),
        GroupCommand::Describe(a) => describe(a),
    }
}

fn consumer(client: &ClientArgs, group: &str) -> CliResult<BaseConsumer> {
    client.check_reachable()?;
    let mut config = client.client_config()?;
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false");
    config
        .create()
        .map_err(|e| CliError::error(format!("cannot create client: {e}")))
}

fn list(a: ListArgs) -> CliResult {
    let c = consumer(&a.client, "runnel-cli")?;
    let groups = c
        .fetch_group_list(None, a.client.timeout())
        .map_err(|e| CliError::kafka("list groups", e))?;
    let mut rows: Vec<&GroupInfo> = groups.groups().iter().collect();
    rows.sort_by(|x, y| x.name().cmp(y.name()));
    if a.json {
        let v: Vec<_> = rows
            .iter()
            .map(|g| {
                json!({"group": g.name(), "state": g.state(), "protocol_type": g.protocol_type(),
                       "protocol": g.protocol(), "members": g.members().len()})
            })
            .collect();
        print_json(&json!(v));
    } else {
        let rows: Vec<Vec<String>> = rows
            .iter()
            .map(|g| {
                vec![
                    g.name().to_string(),
                    g.state().to_string(),
                    g.protocol_type().to_string(),
                    g.protocol().to_string(),
                    g.members().len().to_string(),
                ]
            })
            .collect();
        print_table(&["GROUP", "STATE", "TYPE", "PROTOCOL", "MEMBERS"], &rows);
    }
    Ok(())
}

/// Topic partitions in a member's assignment (consumer protocol; empty if it is not one).
fn decode_assignment(raw: Option<&[u8]>) -> Vec<(String, i32)> {
    let Some(raw) = raw.filter(|r| r.len() >= 2) else {
        return Vec::new();
    };
    let version = i16::from_be_bytes([raw[0], raw[1]]).clamp(0, 3);
    let mut buf = Bytes::copy_from_slice(&raw[2..]);
    match ConsumerProtocolAssignment::decode(&mut buf, version) {
        Ok(a) => a
            .assigned_partitions
            .iter()
            .flat_map(|t| t.partitions.iter().map(move |p| (t.topic.to_string(), *p)))
            .collect(),
        Err(_) => Vec::new(),
    }
}

struct Member {
    id: String,
    client_id: String,
    host: String,
    partitions: Vec<(String, i32)>,
}

struct PartitionRow {
    committed: Option<i64>,
    log_end: i64,
    owner: Option<String>,
}

fn describe(a: DescribeArgs) -> CliResult {
    let c = consumer(&a.client, &a.group)?;
    let groups = c
        .fetch_group_list(Some(&a.group), a.client.timeout())
        .map_err(|e| CliError::kafka("describe group", e))?;
    let info = groups.groups().iter().find(|g| g.name() == a.group);
    let state = info
        .map(|g| g.state().to_string())
        .unwrap_or_else(|| "Dead".into());
    let members: Vec<Member> = info
        .map(|g| {
            g.members()
                .iter()
                .map(|m| Member {
                    id: m.id().to_string(),
                    client_id: m.client_id().to_string(),
                    host: m.client_host().to_string(),
                    partitions: decode_assignment(m.assignment()),
                })
                .collect()
        })
        .unwrap_or_default();

    // Which partitions to ask committed offsets for: everything the cluster has.
    let md = metadata(c.client(), None, &a.client)?;
    let mut tpl = TopicPartitionList::new();
    for t in md.topics().iter().filter(|t| !t.name().starts_with("__")) {
        for p in t.partitions() {
            tpl.add_partition(t.name(), p.id());
        }
    }
    for m in &members {
        for (t, p) in &m.partitions {
            if tpl.find_partition(t, *p).is_none() {
                tpl.add_partition(t, *p);
            }
        }
    }
    let committed = if tpl.count() == 0 {
        tpl
    } else {
        c.committed_offsets(tpl, a.client.timeout())
            .map_err(|e| CliError::kafka("fetch committed offsets", e))?
    };
    let mut partitions: BTreeMap<(String, i32), PartitionRow> = BTreeMap::new();
    for e in committed.elements() {
        let owner = members
            .iter()
            .find(|m| {
                m.partitions
                    .iter()
                    .any(|(t, p)| t == e.topic() && *p == e.partition())
            })
            .map(|m| m.client_id.clone() + " " + &m.id);
        let committed = match e.offset() {
            Offset::Offset(n) => Some(n),
            _ => None,
        };
        if committed.is_none() && owner.is_none() {
            continue;
        }
        let (_, log_end) = c
            .client()
            .fetch_watermarks(e.topic(), e.partition(), a.client.timeout())
            .map_err(|err| CliError::kafka("list offsets", err))?;
        partitions.insert(
            (e.topic().to_string(), e.partition()),
            PartitionRow {
                committed,
                log_end,
                owner,
            },
        );
    }
    if (state == "Dead" || info.is_none()) && members.is_empty() && partitions.is_empty() {
        return Err(CliError::not_found(format!("unknown group '{}'", a.group)));
    }
    let lag = |r: &PartitionRow| r.committed.map(|c| (r.log_end - c).max(0));
    let total_lag: i64 = partitions.values().filter_map(lag).sum();
    if a.json {
        let ms: Vec<_> = members
            .iter()
            .map(|m| {
                let parts: Vec<_> = m
                    .partitions
                    .iter()
                    .map(|(t, p)| json!({"topic": t, "partition": p}))
                    .collect();
                json!({"member_id": m.id, "client_id": m.client_id, "host": m.host, "assignment": parts})
            })
            .collect();
        let ps: Vec<_> = partitions
            .iter()
            .map(|((t, p), r)| {
                json!({"topic": t, "partition": p, "committed_offset": r.committed,
                       "log_end_offset": r.log_end, "lag": lag(r), "owner": r.owner})
            })
            .collect();
        print_json(&json!({
            "group": a.group,
            "state": state,
            "protocol_type": info.map(|g| g.protocol_type()),
            "protocol": info.map(|g| g.protocol()),
            "members": ms,
            "partitions": ps,
            "total_lag": total_lag,
        }));
        return Ok(());
    }
    println!(
        "group {} ({state}, protocol {}): {} member(s), total lag {total_lag}\n",
        a.group,
        info.map(|g| g.protocol())
            .filter(|p| !p.is_empty())
            .unwrap_or("-"),
        members.len()
    );
    if !members.is_empty() {
        let rows: Vec<Vec<String>> = members
            .iter()
            .map(|m| {
                let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
                for (t, p) in &m.partitions {
                    by_topic.entry(t).or_default().push(*p);
                }
                let assignment = by_topic
                    .iter()
                    .map(|(t, ps)| {
                        let ps: Vec<String> = ps.iter().map(i32::to_string).collect();
                        format!("{t}:{}", ps.join(","))
                    })
                    .collect::<Vec<_>>()
                    .join(" ");
                vec![
                    m.id.clone(),
                    m.client_id.clone(),
                    m.host.clone(),
                    assignment,
                ]
            })
            .collect();
        print_table(&["MEMBER", "CLIENT-ID", "HOST", "ASSIGNMENT"], &rows);
        println!();
    }
    let rows: Vec<Vec<String>> = partitions
        .iter()
        .map(|((t, p), r)| {
            let dash = || "-".to_string();
            vec![
                t.clone(),
                p.to_string(),
                r.committed.map(|c| c.to_string()).unwrap_or_else(dash),
                r.log_end.to_string(),
                lag(r).map(|l| l.to_string()).unwrap_or_else(dash),
                r.owner.clone().unwrap_or_else(dash),
            ]
        })
        .collect();
    print_table(
        &["TOPIC", "PARTITION", "COMMITTED", "LOG-END", "LAG", "OWNER"],
        &rows,
    );
    Ok(())
}
