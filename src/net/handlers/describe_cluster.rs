//! DescribeCluster (60) v0–1: this broker is the whole cluster and its controller.

use std::rc::Rc;

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterResponse};

use super::str_bytes;
use crate::shard::Shard;

pub const MIN: i16 = 0;
pub const MAX: i16 = 1;

pub fn handle(shard: &Rc<Shard>) -> DescribeClusterResponse {
    let c = &shard.config;
    DescribeClusterResponse::default()
        .with_cluster_id(str_bytes(super::metadata::CLUSTER_ID))
        .with_controller_id(BrokerId(c.node_id))
        .with_endpoint_type(1)
        .with_brokers(vec![DescribeClusterBroker::default()
            .with_broker_id(BrokerId(c.node_id))
            .with_host(str_bytes(&c.advertised_host))
            .with_port(c.advertised_port as i32)])
}
