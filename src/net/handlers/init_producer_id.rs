//! InitProducerId (22) v0–5: idempotent producers (transactions come later).

use std::rc::Rc;

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use crate::kafka_error as ec;
use crate::shard::Shard;

pub const MIN: i16 = 0;
pub const MAX: i16 = 5;

pub fn handle(shard: &Rc<Shard>, req: InitProducerIdRequest) -> InitProducerIdResponse {
    if req.transactional_id.is_some() {
        // Transactions are not served yet; say so instead of pretending.
        return InitProducerIdResponse::default()
            .with_error_code(ec::COORDINATOR_NOT_AVAILABLE)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
    }
    // A producer bumping its epoch (KIP-360) keeps its id.
    if req.producer_id.0 >= 0 && req.producer_epoch >= 0 && req.producer_epoch < i16::MAX {
        return InitProducerIdResponse::default()
            .with_producer_id(req.producer_id)
            .with_producer_epoch(req.producer_epoch + 1);
    }
    InitProducerIdResponse::default()
        .with_producer_id(ProducerId(shard.allocate_producer_id()))
        .with_producer_epoch(0)
}
