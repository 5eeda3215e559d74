//! Replication (issue 7): single node for now. Partition leadership is always this
//! broker, leader epoch 0; the metadata log in `crate::metadata` is what a Raft quorum
//! will carry.
