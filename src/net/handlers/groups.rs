//! Group coordinator APIs: FindCoordinator (10) v0–4, JoinGroup (11) v0–9, Heartbeat
//! (12) v0–4, LeaveGroup (13) v0–5, SyncGroup (14) v0–5, OffsetCommit (8) v2–9,
//! OffsetFetch (9) v1–9, ListGroups (16) v0–5, DescribeGroups (15) v0–6, DeleteGroups
//! (42) v0–2, OffsetDelete (47) v0. This file only translates the wire types; the group logic runs on the
//! group's coordinator shard (`crate::group`), reached with `invoke_on`.

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    BrokerId, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest,
    DescribeGroupsResponse, FindCoordinatorRequest, FindCoordinatorResponse, GroupId,
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse, OffsetCommitRequest,
    OffsetCommitResponse, OffsetDeleteRequest, OffsetDeleteResponse, OffsetFetchRequest,
    OffsetFetchResponse, SyncGroupRequest, SyncGroupResponse,
};
use kafka_protocol::protocol::StrBytes;

use super::{str_bytes, topic_name};
use crate::group::{self, codes, CommitEntry, Committed, JoinReply, JoinRequest};
use crate::kafka_error as ec;
use crate::shard::Shard;

pub const FIND_COORDINATOR_MIN: i16 = 0;
pub const FIND_COORDINATOR_MAX: i16 = 4;
pub const JOIN_MIN: i16 = 0;
pub const JOIN_MAX: i16 = 9;
pub const HEARTBEAT_MIN: i16 = 0;
pub const HEARTBEAT_MAX: i16 = 4;
pub const LEAVE_MIN: i16 = 0;
pub const LEAVE_MAX: i16 = 5;
pub const SYNC_MIN: i16 = 0;
pub const SYNC_MAX: i16 = 5;
pub const OFFSET_COMMIT_MIN: i16 = 2;
pub const OFFSET_COMMIT_MAX: i16 = 9;
pub const OFFSET_FETCH_MIN: i16 = 1;
pub const OFFSET_FETCH_MAX: i16 = 9;
pub const LIST_MIN: i16 = 0;
pub const LIST_MAX: i16 = 5;
pub const DESCRIBE_MIN: i16 = 0;
pub const DESCRIBE_MAX: i16 = 6;
pub const DELETE_MIN: i16 = 0;
pub const DELETE_MAX: i16 = 2;
pub const OFFSET_DELETE_MIN: i16 = 0;
pub const OFFSET_DELETE_MAX: i16 = 0;

/// FindCoordinator key types (KIP-98 transactions, KIP-932 share groups).
const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;
/// DescribeGroups authorized operations with no ACLs: READ, DELETE, DESCRIBE.
const GROUP_OPERATIONS_ALL: i32 = (1 << 3) | (1 << 6) | (1 << 8);

fn owner(shard: &Shard, group_id: &str) -> usize {
    group::coordinator_shard(group_id, shard.nshards)
}

fn opt_str(s: &Option<StrBytes>) -> Option<String> {
    s.as_ref().map(|s| s.to_string())
}

pub async fn find_coordinator(
    shard: &Rc<Shard>,
    req: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let key_type = if version >= 1 {
        req.key_type
    } else {
        KEY_TYPE_GROUP
    };
    let (code, message) = match key_type {
        // The offsets topic must exist first: its partitions' leaders coordinate the
        // groups (this broker on a single node), and the first commit does not pay for
        // its creation.
        KEY_TYPE_GROUP => match group::store::ensure_topic(shard).await {
            Ok(_) => (ec::NONE, None),
            Err(e) => {
                tracing::warn!(error = %e, "offsets topic unavailable");
                (codes::COORDINATOR_NOT_AVAILABLE, Some(e))
            }
        },
        KEY_TYPE_TRANSACTION => (
            codes::COORDINATOR_NOT_AVAILABLE,
            Some("transactions are not supported".to_string()),
        ),
        other => (
            codes::INVALID_REQUEST,
            Some(format!("unknown coordinator key type {other}")),
        ),
    };
    let image = shard.image();
    // (code, message, node id, host, port) for one group id.
    let answer = |key: &str| -> (i16, Option<String>, i32, String, i32) {
        if code != ec::NONE {
            return (code, message.clone(), -1, String::new(), -1);
        }
        let cfg = &shard.config;
        if cfg.cluster.is_none() {
            return (
                code,
                None,
                cfg.node_id,
                cfg.advertised_host.clone(),
                i32::from(cfg.advertised_port),
            );
        }
        // In a cluster: the leader of the group's offsets partition.
        match group::cluster::coordinator(&image, key, cfg.node_id) {
            Ok(b) => (ec::NONE, None, b.id, b.host, i32::from(b.port)),
            Err(code) => (
                code,
                Some("the group's offsets partition has no leader".to_string()),
                -1,
                String::new(),
                -1,
            ),
        }
    };
    let mut resp = FindCoordinatorResponse::default();
    if version >= 4 {
        // KIP-699: one answer per key.
        resp.coordinators = req
            .coordinator_keys
            .iter()
            .map(|k| {
                let (code, message, node_id, host, port) = answer(k.as_str());
                Coordinator::default()
                    .with_key(k.clone())
                    .with_node_id(BrokerId(node_id))
                    .with_host(str_bytes(&host))
                    .with_port(port)
                    .with_error_code(code)
                    .with_error_message(message.as_deref().map(str_bytes))
            })
            .collect();
    } else {
        let (code, message, node_id, host, port) = answer(req.key.as_str());
        resp.error_code = code;
        resp.node_id = BrokerId(node_id);
        resp.host = str_bytes(&host);
        resp.port = port;
        if version >= 1 {
            resp.error_message = message.as_deref().map(str_bytes);
        }
    }
    resp
}

fn join_response(r: JoinReply, version: i16) -> JoinGroupResponse {
    let members = r
        .members
        .into_iter()
        .map(|(id, instance, metadata)| {
            JoinGroupResponseMember::default()
                .with_member_id(str_bytes(&id))
                .with_group_instance_id(if version >= 5 {
                    instance.as_deref().map(str_bytes)
                } else {
                    None
                })
                .with_metadata(metadata)
        })
        .collect();
    // Before v7 the protocol name is not nullable.
    let protocol_name = match r.protocol_name {
        Some(n) => Some(str_bytes(&n)),
        None if version < 7 => Some(str_bytes("")),
        None => None,
    };
    JoinGroupResponse::default()
        .with_error_code(r.error)
        .with_generation_id(r.generation)
        .with_protocol_type(if version >= 7 {
            r.protocol_type.as_deref().map(str_bytes)
        } else {
            None
        })
        .with_protocol_name(protocol_name)
        .with_leader(str_bytes(&r.leader))
        .with_member_id(str_bytes(&r.member_id))
        .with_members(members)
}

pub async fn join_group(
    shard: &Rc<Shard>,
    req: JoinGroupRequest,
    version: i16,
    client_id: String,
) -> JoinGroupResponse {
    let group_id = req.group_id.0.to_string();
    let member_id = req.member_id.to_string();
    if group_id.is_empty() {
        return join_response(
            JoinReply::error(codes::INVALID_GROUP_ID, &member_id),
            version,
        );
    }
    let c = &shard.config;
    if !(c.group_min_session_timeout_ms..=c.group_max_session_timeout_ms)
        .contains(&req.session_timeout_ms)
    {
        return join_response(
            JoinReply::error(codes::INVALID_SESSION_TIMEOUT, &member_id),
            version,
        );
    }
    // v0 has no rebalance timeout: the session timeout stands in, as in Kafka.
    let rebalance_ms = if version >= 1 && req.rebalance_timeout_ms > 0 {
        req.rebalance_timeout_ms
    } else {
        req.session_timeout_ms
    };
    let join = JoinRequest {
        member_id,
        instance_id: if version >= 5 {
            opt_str(&req.group_instance_id)
        } else {
            None
        },
        client_id,
        client_host: String::new(),
        session_timeout: Duration::from_millis(req.session_timeout_ms as u64),
        rebalance_timeout: Duration::from_millis(rebalance_ms as u64),
        protocol_type: req.protocol_type.to_string(),
        protocols: req
            .protocols
            .iter()
            .map(|p| (p.name.to_string(), p.metadata.clone()))
            .collect(),
        require_known_member_id: version >= 4,
    };
    let target = owner(shard, &group_id);
    let reply = shard
        .invoke_on(target, move |s| async move {
            if let Err(code) = group::cluster::ensure(&s, &group_id).await {
                return JoinReply::error(code, &join.member_id);
            }
            group::join(&s, group_id, join).await
        })
        .await;
    join_response(reply, version)
}

pub async fn sync_group(
    shard: &Rc<Shard>,
    req: SyncGroupRequest,
    version: i16,
) -> SyncGroupResponse {
    let group_id = req.group_id.0.to_string();
    if group_id.is_empty() {
        return SyncGroupResponse::default().with_error_code(codes::INVALID_GROUP_ID);
    }
    let member_id = req.member_id.to_string();
    let instance_id = opt_str(&req.group_instance_id);
    let generation = req.generation_id;
    let protocol_type = opt_str(&req.protocol_type);
    let protocol_name = opt_str(&req.protocol_name);
    let assignments: Vec<(String, Bytes)> = req
        .assignments
        .iter()
        .map(|a| (a.member_id.to_string(), a.assignment.clone()))
        .collect();
    let target = owner(shard, &group_id);
    let r = shard
        .invoke_on(target, move |s| async move {
            if let Err(code) = group::cluster::ensure(&s, &group_id).await {
                return group::SyncReply::error(code);
            }
            group::sync(
                &s,
                group_id,
                member_id,
                instance_id,
                generation,
                protocol_type,
                protocol_name,
                assignments,
            )
            .await
        })
        .await;
    let mut resp = SyncGroupResponse::default()
        .with_error_code(r.error)
        .with_assignment(r.assignment);
    if version >= 5 {
        resp.protocol_type = r.protocol_type.as_deref().map(str_bytes);
        resp.protocol_name = r.protocol_name.as_deref().map(str_bytes);
    }
    resp
}

pub async fn heartbeat(shard: &Rc<Shard>, req: HeartbeatRequest) -> HeartbeatResponse {
    let group_id = req.group_id.0.to_string();
    if group_id.is_empty() {
        return HeartbeatResponse::default().with_error_code(codes::INVALID_GROUP_ID);
    }
    let member_id = req.member_id.to_string();
    let instance_id = opt_str(&req.group_instance_id);
    let generation = req.generation_id;
    let target = owner(shard, &group_id);
    let code = shard
        .invoke_on(target, move |s| async move {
            group::cluster::ensure(&s, &group_id).await?;
            Ok::<_, i16>(group::heartbeat(&s, group_id, member_id, instance_id, generation).await)
        })
        .await
        .unwrap_or_else(|code| code);
    HeartbeatResponse::default().with_error_code(code)
}

pub async fn leave_group(
    shard: &Rc<Shard>,
    req: LeaveGroupRequest,
    version: i16,
) -> LeaveGroupResponse {
    let group_id = req.group_id.0.to_string();
    if group_id.is_empty() {
        return LeaveGroupResponse::default().with_error_code(codes::INVALID_GROUP_ID);
    }
    // v3+ (KIP-345) leaves several members at once, by member or instance id.
    let members: Vec<(String, Option<String>)> = if version >= 3 {
        req.members
            .iter()
            .map(|m| (m.member_id.to_string(), opt_str(&m.group_instance_id)))
            .collect()
    } else {
        vec![(req.member_id.to_string(), None)]
    };
    let asked = members.clone();
    let target = owner(shard, &group_id);
    let result = shard
        .invoke_on(target, move |s| async move {
            group::cluster::ensure(&s, &group_id).await?;
            group::leave(&s, group_id, members).await
        })
        .await;
    let codes_per_member = match result {
        Ok(c) => c,
        Err(code) => return LeaveGroupResponse::default().with_error_code(code),
    };
    if version >= 3 {
        LeaveGroupResponse::default().with_members(
            asked
                .into_iter()
                .zip(codes_per_member)
                .map(|((id, instance), code)| {
                    MemberResponse::default()
                        .with_member_id(str_bytes(&id))
                        .with_group_instance_id(instance.as_deref().map(str_bytes))
                        .with_error_code(code)
                })
                .collect(),
        )
    } else {
        LeaveGroupResponse::default().with_error_code(codes_per_member[0])
    }
}

pub async fn offset_commit(
    shard: &Rc<Shard>,
    req: OffsetCommitRequest,
    version: i16,
) -> OffsetCommitResponse {
    let group_id = req.group_id.0.to_string();
    let image = shard.image();
    // (topic, partition, immediate error) in request order.
    let mut slots: Vec<(String, i32, Option<i16>)> = Vec::new();
    let mut entries = Vec::new();
    for t in &req.topics {
        let name = t.name.0.to_string();
        let meta = image.topic(&name);
        for p in &t.partitions {
            let known = meta.is_some_and(|m| {
                p.partition_index >= 0 && (p.partition_index as usize) < m.owners.len()
            });
            let immediate = if group_id.is_empty() {
                Some(codes::INVALID_GROUP_ID)
            } else if !known {
                Some(ec::UNKNOWN_TOPIC_OR_PARTITION)
            } else {
                entries.push(CommitEntry {
                    topic: name.clone(),
                    partition: p.partition_index,
                    offset: p.committed_offset,
                    leader_epoch: if version >= 6 {
                        p.committed_leader_epoch
                    } else {
                        -1
                    },
                    metadata: opt_str(&p.committed_metadata),
                });
                None
            };
            slots.push((name.clone(), p.partition_index, immediate));
        }
    }
    let mut results = if entries.is_empty() {
        Vec::new()
    } else {
        let member_id = req.member_id.to_string();
        let instance_id = if version >= 7 {
            opt_str(&req.group_instance_id)
        } else {
            None
        };
        let generation = req.generation_id_or_member_epoch;
        let target = owner(shard, &group_id);
        shard
            .invoke_on(target, move |s| async move {
                if let Err(code) = group::cluster::ensure(&s, &group_id).await {
                    return vec![code; entries.len()];
                }
                group::commit(&s, group_id, member_id, instance_id, generation, entries).await
            })
            .await
    }
    .into_iter();
    let mut topics: Vec<OffsetCommitResponseTopic> = Vec::new();
    for (name, partition, immediate) in slots {
        let code =
            immediate.unwrap_or_else(|| results.next().expect("one commit result per entry sent"));
        let part = OffsetCommitResponsePartition::default()
            .with_partition_index(partition)
            .with_error_code(code);
        match topics.iter_mut().find(|t| t.name.0.as_str() == name) {
            Some(t) => t.partitions.push(part),
            None => topics.push(
                OffsetCommitResponseTopic::default()
                    .with_name(topic_name(&name))
                    .with_partitions(vec![part]),
            ),
        }
    }
    OffsetCommitResponse::default().with_topics(topics)
}

type FetchedOffsets = Result<Vec<(String, i32, Option<Committed>)>, i16>;

async fn fetch_group(
    shard: &Rc<Shard>,
    group_id: String,
    topics: Option<Vec<(String, Vec<i32>)>>,
) -> FetchedOffsets {
    if group_id.is_empty() {
        return Err(codes::INVALID_GROUP_ID);
    }
    let target = owner(shard, &group_id);
    shard
        .invoke_on(target, move |s| async move {
            group::cluster::ensure(&s, &group_id).await?;
            group::fetch_offsets(&s, group_id, topics).await
        })
        .await
}

/// (offset, leader epoch, metadata) as OffsetFetch reports them; -1 when nothing is committed.
fn fetched_fields(c: &Option<Committed>) -> (i64, i32, String) {
    match c {
        Some(c) => (c.offset, c.leader_epoch, c.metadata.clone()),
        None => (-1, -1, String::new()),
    }
}

pub async fn offset_fetch(
    shard: &Rc<Shard>,
    req: OffsetFetchRequest,
    version: i16,
) -> OffsetFetchResponse {
    if version >= 8 {
        // KIP-709: several groups per request.
        let calls = req.groups.into_iter().map(|g| {
            let id = g.group_id.0.to_string();
            let topics = g.topics.map(|ts| {
                ts.into_iter()
                    .map(|t| (t.name.0.to_string(), t.partition_indexes))
                    .collect()
            });
            async move { (id.clone(), fetch_group(shard, id, topics).await) }
        });
        let groups = futures::future::join_all(calls)
            .await
            .into_iter()
            .map(|(id, r)| {
                let base =
                    OffsetFetchResponseGroup::default().with_group_id(GroupId(str_bytes(&id)));
                match r {
                    Err(code) => base.with_error_code(code),
                    Ok(parts) => {
                        let mut topics: Vec<OffsetFetchResponseTopics> = Vec::new();
                        for (t, p, c) in parts {
                            let (offset, epoch, metadata) = fetched_fields(&c);
                            let part = OffsetFetchResponsePartitions::default()
                                .with_partition_index(p)
                                .with_committed_offset(offset)
                                .with_committed_leader_epoch(epoch)
                                .with_metadata(Some(str_bytes(&metadata)));
                            match topics.iter_mut().find(|x| x.name.0.as_str() == t) {
                                Some(x) => x.partitions.push(part),
                                None => topics.push(
                                    OffsetFetchResponseTopics::default()
                                        .with_name(topic_name(&t))
                                        .with_partitions(vec![part]),
                                ),
                            }
                        }
                        base.with_topics(topics)
                    }
                }
            })
            .collect();
        return OffsetFetchResponse::default().with_groups(groups);
    }
    let group_id = req.group_id.0.to_string();
    let topics = req.topics.map(|ts| {
        ts.into_iter()
            .map(|t| (t.name.0.to_string(), t.partition_indexes))
            .collect()
    });
    let mut resp = OffsetFetchResponse::default();
    match fetch_group(shard, group_id, topics).await {
        Err(code) => {
            if version >= 2 {
                resp.error_code = code;
            }
        }
        Ok(parts) => {
            for (t, p, c) in parts {
                let (offset, epoch, metadata) = fetched_fields(&c);
                let part = OffsetFetchResponsePartition::default()
                    .with_partition_index(p)
                    .with_committed_offset(offset)
                    .with_committed_leader_epoch(if version >= 5 { epoch } else { -1 })
                    .with_metadata(Some(str_bytes(&metadata)));
                match resp.topics.iter_mut().find(|x| x.name.0.as_str() == t) {
                    Some(x) => x.partitions.push(part),
                    None => resp.topics.push(
                        OffsetFetchResponseTopic::default()
                            .with_name(topic_name(&t))
                            .with_partitions(vec![part]),
                    ),
                }
            }
        }
    }
    resp
}

pub async fn list_groups(
    shard: &Rc<Shard>,
    req: ListGroupsRequest,
    version: i16,
) -> ListGroupsResponse {
    let per_shard = shard
        .invoke_on_all(|s| async move { group::list(&s).await })
        .await;
    let states: Vec<String> = if version >= 4 {
        req.states_filter.iter().map(|s| s.to_lowercase()).collect()
    } else {
        Vec::new()
    };
    // Only classic groups exist here: a type filter without "classic" matches nothing.
    let type_ok = version < 5
        || req.types_filter.is_empty()
        || req
            .types_filter
            .iter()
            .any(|t| t.eq_ignore_ascii_case("classic"));
    let mut resp = ListGroupsResponse::default();
    for r in per_shard {
        match r {
            Err(code) => resp.error_code = code,
            Ok(groups) => {
                for (id, protocol_type, state) in groups {
                    if !type_ok || (!states.is_empty() && !states.contains(&state.to_lowercase())) {
                        continue;
                    }
                    let mut g = ListedGroup::default()
                        .with_group_id(GroupId(str_bytes(&id)))
                        .with_protocol_type(str_bytes(&protocol_type));
                    if version >= 4 {
                        g.group_state = str_bytes(state);
                    }
                    if version >= 5 {
                        g.group_type = str_bytes("classic");
                    }
                    resp.groups.push(g);
                }
            }
        }
    }
    resp
}

pub async fn describe_groups(
    shard: &Rc<Shard>,
    req: DescribeGroupsRequest,
    version: i16,
) -> DescribeGroupsResponse {
    let include_ops = version >= 3 && req.include_authorized_operations;
    let calls = req.groups.into_iter().map(|g| {
        let id = g.0.to_string();
        async move {
            let target = owner(shard, &id);
            let gid = id.clone();
            let r = if id.is_empty() {
                Err(codes::INVALID_GROUP_ID)
            } else {
                shard
                    .invoke_on(target, move |s| async move {
                        group::cluster::ensure(&s, &gid).await?;
                        group::describe(&s, gid).await
                    })
                    .await
            };
            (id, r)
        }
    });
    let groups = futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|(id, r)| {
            let mut d = DescribedGroup::default().with_group_id(GroupId(str_bytes(&id)));
            if include_ops {
                d.authorized_operations = GROUP_OPERATIONS_ALL;
            }
            match r {
                Err(code) => d.with_error_code(code).with_group_state(str_bytes("Dead")),
                // v6 (KIP-1043) reports an unknown group; older versions describe it Dead.
                Ok(None) if version >= 6 => d
                    .with_error_code(codes::GROUP_ID_NOT_FOUND)
                    .with_error_message(Some(str_bytes(&format!("group {id} not found"))))
                    .with_group_state(str_bytes("Dead")),
                Ok(None) => d.with_group_state(str_bytes("Dead")),
                Ok(Some(g)) => d
                    .with_group_state(str_bytes(g.state))
                    .with_protocol_type(str_bytes(&g.protocol_type))
                    .with_protocol_data(str_bytes(&g.protocol))
                    .with_members(
                        g.members
                            .into_iter()
                            .map(|(mid, instance, client_id, host, metadata, assignment)| {
                                DescribedGroupMember::default()
                                    .with_member_id(str_bytes(&mid))
                                    .with_group_instance_id(if version >= 4 {
                                        instance.as_deref().map(str_bytes)
                                    } else {
                                        None
                                    })
                                    .with_client_id(str_bytes(&client_id))
                                    .with_client_host(str_bytes(&host))
                                    .with_member_metadata(metadata)
                                    .with_member_assignment(assignment)
                            })
                            .collect(),
                    ),
            }
        })
        .collect();
    DescribeGroupsResponse::default().with_groups(groups)
}

pub async fn delete_groups(shard: &Rc<Shard>, req: DeleteGroupsRequest) -> DeleteGroupsResponse {
    let calls = req.groups_names.into_iter().map(|g| {
        let id = g.0.to_string();
        async move {
            let gid = id.clone();
            let code = if id.is_empty() {
                codes::INVALID_GROUP_ID
            } else {
                shard
                    .invoke_on(owner(shard, &id), move |s| async move {
                        if let Err(code) = group::cluster::ensure(&s, &gid).await {
                            return code;
                        }
                        group::delete(&s, gid).await
                    })
                    .await
            };
            DeletableGroupResult::default()
                .with_group_id(GroupId(str_bytes(&id)))
                .with_error_code(code)
        }
    });
    DeleteGroupsResponse::default().with_results(futures::future::join_all(calls).await)
}

pub async fn offset_delete(shard: &Rc<Shard>, req: OffsetDeleteRequest) -> OffsetDeleteResponse {
    let group_id = req.group_id.0.to_string();
    if group_id.is_empty() {
        return OffsetDeleteResponse::default().with_error_code(codes::INVALID_GROUP_ID);
    }
    let image = shard.image();
    // (topic, partition, immediate error) in request order.
    let mut slots: Vec<(String, i32, Option<i16>)> = Vec::new();
    let mut wanted = Vec::new();
    for t in &req.topics {
        let name = t.name.0.to_string();
        let meta = image.topic(&name);
        for p in &t.partitions {
            let known = meta.is_some_and(|m| {
                p.partition_index >= 0 && (p.partition_index as usize) < m.owners.len()
            });
            if known {
                wanted.push((name.clone(), p.partition_index));
                slots.push((name.clone(), p.partition_index, None));
            } else {
                slots.push((
                    name.clone(),
                    p.partition_index,
                    Some(ec::UNKNOWN_TOPIC_OR_PARTITION),
                ));
            }
        }
    }
    let target = owner(shard, &group_id);
    let results = shard
        .invoke_on(target, move |s| async move {
            group::cluster::ensure(&s, &group_id).await?;
            group::delete_offsets(&s, group_id, wanted).await
        })
        .await;
    let mut results = match results {
        Ok(r) => r.into_iter(),
        Err(code) => return OffsetDeleteResponse::default().with_error_code(code),
    };
    let mut topics: Vec<OffsetDeleteResponseTopic> = Vec::new();
    for (name, partition, immediate) in slots {
        let code =
            immediate.unwrap_or_else(|| results.next().expect("one result per partition sent"));
        let part = OffsetDeleteResponsePartition::default()
            .with_partition_index(partition)
            .with_error_code(code);
        match topics.iter_mut().find(|t| t.name.0.as_str() == name) {
            Some(t) => t.partitions.push(part),
            None => topics.push(
                OffsetDeleteResponseTopic::default()
                    .with_name(topic_name(&name))
                    .with_partitions(vec![part]),
            ),
        }
    }
    OffsetDeleteResponse::default().with_topics(topics)
}
