//! DescribeCluster (60) v0–1: the registered brokers and the metadata leader.

use std::rc::Rc;

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterResponse};

use super::str_bytes;
use crate::shard::Shard;

pub const MIN: i16 = 0;
pub const MAX: i16 = 1;

pub fn handle(shard: &Rc<Shard>) -> DescribeClusterResponse {
    let brokers = super::metadata::brokers(shard, &shard.image())
        .into_iter()
        .map(|b| {
            DescribeClusterBroker::default()
                .with_broker_id(BrokerId(b.id))
                .with_host(str_bytes(&b.host))
                .with_port(i32::from(b.port))
        })
        .collect();
    DescribeClusterResponse::default()
        .with_cluster_id(str_bytes(&super::metadata::cluster_id(shard)))
        .with_controller_id(BrokerId(super::metadata::controller_id(shard)))
        .with_endpoint_type(1)
        .with_brokers(brokers)
}
