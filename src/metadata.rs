//! The metadata log: topics, partitions, their owning shards and configs are events in
//! `data/meta/metadata.log`, applied to an in-memory `Image`; restart replays the log.
//!
//! Shard 0 is the only writer. Each line is `<crc32c hex> <json event>`; replay stops at
//! the first line that is torn or fails its checksum (a crash mid-append) and the file is
//! truncated there, so a half-written event is never applied.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TopicMeta {
    pub name: String,
    /// Topic id (a UUID); stored as hex text because serde's internally tagged enums
    /// cannot carry a u128.
    #[serde(with = "u128_hex")]
    pub id: u128,
    /// Owning shard of each partition, indexed by partition number. This table is data:
    /// partitions can move between cores by a future event without a code change.
    pub owners: Vec<u32>,
    pub configs: BTreeMap<String, String>,
    pub internal: bool,
    /// Cluster mode: each partition's replica set, leader, leader epoch and in-sync set,
    /// indexed by partition number. Empty on a single node, where this broker leads every
    /// partition at epoch 0 (and the log's lines stay as they were before clusters).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<PartitionState>,
}

/// Kafka's internal topics: written only by the broker's own coordinators, never by
/// a client's Produce (Kafka answers INVALID_TOPIC_EXCEPTION).
pub const INTERNAL_TOPICS: [&str; 3] = [
    OFFSETS_TOPIC,
    TRANSACTION_STATE_TOPIC,
    SHARE_GROUP_STATE_TOPIC,
];
/// Committed offsets and group metadata (the group coordinator's log).
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// Transaction coordinator state.
pub const TRANSACTION_STATE_TOPIC: &str = "__transaction_state";
/// Share-group partition state.
pub const SHARE_GROUP_STATE_TOPIC: &str = "__share_group_state";

impl TopicMeta {
    /// Internal: marked so in the metadata, or one of Kafka's internal names (a
    /// cluster's controller does not mark them).
    pub fn is_internal(&self) -> bool {
        self.internal || INTERNAL_TOPICS.contains(&self.name.as_str())
    }
}

/// Where one partition lives in a cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionState {
    /// Broker ids holding a copy; the first is the preferred leader.
    pub replicas: Vec<i32>,
    /// -1: no leader (every in-sync replica is down).
    pub leader: i32,
    /// Bumped on every leader change, so a deposed leader's writes can be told apart.
    pub leader_epoch: i32,
    /// In-sync replicas: those that have everything up to the high watermark.
    pub isr: Vec<i32>,
}

impl TopicMeta {
    pub fn partition_count(&self) -> usize {
        self.owners.len()
    }

    /// Leader of `partition`, or `None` when it has none (or does not exist). `local`
    /// is this broker's id, the leader of everything on a single node.
    #[inline]
    pub fn leader(&self, partition: i32, local: i32) -> Option<i32> {
        if self.replicas.is_empty() {
            return Some(local);
        }
        let p = self.replicas.get(usize::try_from(partition).ok()?)?;
        (p.leader >= 0).then_some(p.leader)
    }

    /// Whether broker `node` keeps a copy of `partition`.
    pub fn is_replica(&self, partition: i32, node: i32) -> bool {
        match usize::try_from(partition) {
            Ok(p) if self.replicas.is_empty() => p < self.owners.len(),
            Ok(p) => self
                .replicas
                .get(p)
                .is_some_and(|r| r.replicas.contains(&node)),
            Err(_) => false,
        }
    }

    pub fn replication_factor(&self) -> usize {
        self.replicas.first().map(|r| r.replicas.len()).unwrap_or(1)
    }
}

/// A broker as registered in the cluster metadata (Kafka's broker registration).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerMeta {
    pub id: i32,
    /// Address clients connect to (the advertised listener).
    pub host: String,
    pub port: u16,
    /// Random per process start: a registration with a new one tells the controller
    /// the broker restarted (and lost its in-memory replication state), so it leaves
    /// every in-sync set and leadership, as if it had died (Kafka's broker epoch).
    #[serde(default)]
    pub incarnation: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum MetaEvent {
    CreateTopic {
        topic: TopicMeta,
    },
    DeleteTopic {
        name: String,
    },
    AddPartitions {
        name: String,
        owners: Vec<u32>,
        /// Cluster mode: the new partitions' replica sets.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        replicas: Vec<PartitionState>,
    },
    SetConfigs {
        name: String,
        configs: BTreeMap<String, Option<String>>,
    },
    /// Cluster mode: a broker announces (or changes) its advertised address.
    RegisterBroker {
        broker: BrokerMeta,
    },
    /// Cluster mode: the controller found a broker dead (not heard within the session
    /// timeout; fenced) or alive again. Fenced brokers are not listed to clients.
    SetBrokerFenced {
        id: i32,
        fenced: bool,
    },
    /// Cluster mode: a broker asked to leave (controlled shutdown): it is not elected,
    /// added to in-sync sets or given new replicas until it registers again.
    SetBrokerShuttingDown {
        id: i32,
    },
    /// Cluster mode: a partition's leader, epoch or in-sync set changed.
    ChangePartition {
        name: String,
        partition: i32,
        state: PartitionState,
    },
    /// The cluster's id, made once (the first one applied stays).
    SetClusterId {
        id: String,
    },
}

#[derive(Clone, Debug, Default)]
pub struct Image {
    pub topics: BTreeMap<String, Arc<TopicMeta>>,
    pub by_id: HashMap<u128, String>,
    /// Cluster mode: registered brokers by id. Empty on a single node.
    pub brokers: BTreeMap<i32, BrokerMeta>,
    /// Cluster mode: registered brokers the controller last found dead.
    pub fenced: BTreeSet<i32>,
    /// Cluster mode: brokers in controlled shutdown; cleared by a registration of a new
    /// process (incarnation) of the broker.
    pub shutting_down: BTreeSet<i32>,
    /// Count of events applied; shards use it to tell images apart.
    pub version: u64,
    /// Made at the first start and kept in the metadata log, as Kafka's cluster id is.
    pub cluster_id: Option<String>,
}

/// A new cluster id in Kafka's format: a random UUID as 22 characters of URL-safe
/// base64 without padding.
pub fn new_cluster_id() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes())
}

impl Image {
    pub fn apply(&mut self, event: &MetaEvent) {
        self.version += 1;
        match event {
            // Events are decided against the image they apply to (on the metadata
            // leader, under its lock), so a name clash here is a broken invariant in a
            // single process; in a cluster, a deposed leader's undecided proposal. Either
            // way every broker skips it alike, which keeps the images identical.
            MetaEvent::CreateTopic { topic } if self.topics.contains_key(&topic.name) => {
                tracing::warn!(topic = %topic.name, "metadata: create of an existing topic skipped");
            }
            MetaEvent::CreateTopic { topic } => {
                self.by_id.insert(topic.id, topic.name.clone());
                self.topics
                    .insert(topic.name.clone(), Arc::new(topic.clone()));
            }
            MetaEvent::DeleteTopic { name } => {
                if let Some(t) = self.topics.remove(name) {
                    self.by_id.remove(&t.id);
                }
            }
            MetaEvent::AddPartitions {
                name,
                owners,
                replicas,
            } => {
                if let Some(t) = self.topics.get_mut(name) {
                    let t = Arc::make_mut(t);
                    t.owners.extend_from_slice(owners);
                    t.replicas.extend_from_slice(replicas);
                }
            }
            MetaEvent::RegisterBroker { broker } => {
                let old = self.brokers.insert(broker.id, broker.clone());
                if old.is_none_or(|o| o.incarnation != broker.incarnation) {
                    self.shutting_down.remove(&broker.id);
                }
            }
            MetaEvent::SetClusterId { id } => {
                if self.cluster_id.is_none() {
                    self.cluster_id = Some(id.clone());
                }
            }
            MetaEvent::SetBrokerShuttingDown { id } => {
                self.shutting_down.insert(*id);
            }
            MetaEvent::SetBrokerFenced { id, fenced } => {
                if *fenced {
                    self.fenced.insert(*id);
                } else {
                    self.fenced.remove(id);
                }
            }
            MetaEvent::ChangePartition {
                name,
                partition,
                state,
            } => {
                if let Some(t) = self.topics.get_mut(name) {
                    if let Some(p) = Arc::make_mut(t)
                        .replicas
                        .get_mut(usize::try_from(*partition).unwrap_or(usize::MAX))
                    {
                        *p = state.clone();
                    }
                }
            }
            MetaEvent::SetConfigs { name, configs } => {
                if let Some(t) = self.topics.get_mut(name) {
                    let t = Arc::make_mut(t);
                    for (k, v) in configs {
                        match v {
                            Some(v) => t.configs.insert(k.clone(), v.clone()),
                            None => t.configs.remove(k),
                        };
                    }
                }
            }
        }
    }

    pub fn topic(&self, name: &str) -> Option<&Arc<TopicMeta>> {
        self.topics.get(name)
    }

    pub fn topic_by_id(&self, id: u128) -> Option<&Arc<TopicMeta>> {
        self.by_id.get(&id).and_then(|n| self.topics.get(n))
    }
}

/// Append-only metadata log file, owned by shard 0. Writes are rare (admin requests), so
/// plain buffered std I/O with fsync is used rather than the DMA path.
pub struct MetaLog {
    path: PathBuf,
    file: File,
    /// Bytes the replay at open cut off (a torn or corrupt entry and all after it).
    replay_dropped_bytes: u64,
}

impl MetaLog {
    /// Opens the log, replays it and returns the image it describes.
    pub fn open(dir: &Path) -> std::io::Result<(MetaLog, Image)> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("metadata.log");
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)?;
        let mut image = Image::default();
        let mut good_len: u64 = 0;
        {
            let mut reader = BufReader::new(&file);
            let mut line = String::new();
            loop {
                line.clear();
                let n = match reader.read_line(&mut line) {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "metadata log: unreadable tail, truncating");
                        break;
                    }
                };
                if n == 0 || !line.ends_with('\n') {
                    break;
                }
                match decode_line(line.trim_end_matches('\n')) {
                    Ok(Some(event)) => {
                        image.apply(&event);
                        good_len += n as u64;
                    }
                    // Intact (checksum matches) but not understood: written by a newer
                    // version, or a bug. Truncating would lose metadata, so refuse.
                    Err(e) => {
                        return Err(std::io::Error::other(format!(
                            "{}: entry at byte {good_len} has a valid checksum but does not decode ({e}); refusing to start",
                            path.display()
                        )));
                    }
                    Ok(None) => {
                        tracing::warn!(path = %path.display(), offset = good_len, "metadata log: torn or corrupt entry, truncating");
                        break;
                    }
                }
            }
        }
        let len = file.metadata()?.len();
        if len != good_len {
            file.set_len(good_len)?;
            file.sync_all()?;
        }
        file.seek(SeekFrom::End(0))?;
        let log = MetaLog {
            path,
            file,
            replay_dropped_bytes: len.saturating_sub(good_len),
        };
        Ok((log, image))
    }

    /// Bytes the replay at open cut off: 0 means the image holds every entry the file
    /// held (see `replication::apply::remove_stray_dirs`).
    pub fn replay_dropped_bytes(&self) -> u64 {
        self.replay_dropped_bytes
    }

    /// Appends events durably (write + fdatasync) before they are applied anywhere.
    pub fn append(&mut self, events: &[MetaEvent]) -> std::io::Result<()> {
        let mut buf = Vec::new();
        for e in events {
            let json = serde_json::to_string(e).map_err(std::io::Error::other)?;
            let crc = crc32c::crc32c(json.as_bytes());
            buf.extend_from_slice(format!("{crc:08x} {json}\n").as_bytes());
        }
        self.file.write_all(&buf)?;
        self.file.sync_data().map_err(|e| {
            tracing::error!(path = %self.path.display(), error = %e, "metadata log fdatasync failed");
            e
        })
    }
}

mod u128_hex {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{v:032x}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        let text = String::deserialize(d)?;
        u128::from_str_radix(&text, 16).map_err(serde::de::Error::custom)
    }
}

/// `Ok(None)`: torn or checksum mismatch (a crash mid-append).
fn decode_line(line: &str) -> Result<Option<MetaEvent>, serde_json::Error> {
    let Some((crc, json)) = line.split_once(' ') else {
        return Ok(None);
    };
    let Ok(crc) = u32::from_str_radix(crc, 16) else {
        return Ok(None);
    };
    if crc32c::crc32c(json.as_bytes()) != crc {
        return Ok(None);
    }
    serde_json::from_str(json).map(Some)
}

/// Kafka's legal topic names: 1..=249 chars of [a-zA-Z0-9._-], not "." or "..".
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 249 {
        return Err(format!(
            "topic name length {} is not within 1..=249",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err("topic name cannot be '.' or '..'".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '.' || *c == '_' || *c == '-'))
    {
        return Err(format!("topic name contains illegal character {c:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_stops_at_torn_entry_and_truncates_it() {
        let dir = tempfile::tempdir().unwrap();
        let topic = TopicMeta {
            name: "a".into(),
            id: 7,
            owners: vec![0, 1],
            configs: BTreeMap::new(),
            internal: false,
            replicas: Vec::new(),
        };
        {
            let (mut log, image) = MetaLog::open(dir.path()).unwrap();
            assert!(image.topics.is_empty());
            log.append(&[MetaEvent::CreateTopic { topic }]).unwrap();
        }
        let path = dir.path().join("metadata.log");
        let good = std::fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"0000dead {\"type\":\"DeleteTo")
            .unwrap();
        let (_log, image) = MetaLog::open(dir.path()).unwrap();
        assert_eq!(image.topics["a"].owners, vec![0, 1]);
        assert_eq!(image.topic_by_id(7).unwrap().name, "a");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), good);
    }

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(validate_topic_name("orders.v1_x-2").is_ok());
        assert!(validate_topic_name("").is_err());
        assert!(validate_topic_name("..").is_err());
        assert!(validate_topic_name("a/b").is_err());
        assert!(validate_topic_name(&"x".repeat(250)).is_err());
    }
}
