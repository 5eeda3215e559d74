//! This broker's registration (`RegisterBroker`: its advertised address and process
//! incarnation) and the refusal of a second process with a live broker's node id
//! (Kafka's DUPLICATE_BROKER_REGISTRATION).
//!
//! Which process of a node id is live is known from the cluster listener: every peer
//! link opens with a hello naming its node id and incarnation, and a process counts as
//! live while one of its connections is open and it was heard from within the session
//! timeout (a crash closes its connections; a hung one goes quiet). A registration is
//! refused while another incarnation of its id is live, by the leader deciding it and
//! by any broker it is forwarded to (a second process hears no Raft traffic: that goes
//! to the voter address of its id, the live process's, so it may know no leader).

use std::rc::Rc;
use std::time::{Duration, Instant};

use super::{ForwardFailure, ForwardReply, Quorum, BROKER_SESSION_TIMEOUT, COMMIT_TIMEOUT};
use crate::kafka_error as ec;
use crate::metadata::BrokerMeta;
use crate::replication::commands::{duplicate_registration, MetaCommand, MetaReply};
use crate::replication::StartRefused;
use crate::shard::Shard;

/// How often a broker checks that its registration (advertised address) is current.
const REGISTRATION_RETRY: Duration = Duration::from_millis(200);
/// How long a start waits for its registration before reporting ready anyway (then
/// it keeps trying in the background): a leader that cannot commit holds no start.
const REGISTRATION_AT_START_MAX: Duration = Duration::from_secs(15);
/// One round of asking every peer, when this broker knows no metadata leader: a peer
/// that is down sends no answer, and the round waits this long for it.
const REGISTRATION_PROBE_MAX: Duration = Duration::from_secs(1);
/// A refusal as a duplicate becomes final once refusals have lasted this long. The
/// previous process of a broker restarted after a crash counts as live until it has not
/// been heard from for the session timeout; a process still refused after more than
/// that was heard from since this one started asking, so it is alive.
const DUPLICATE_REFUSAL_FINAL: Duration =
    Duration::from_millis(BROKER_SESSION_TIMEOUT.as_millis() as u64 + 1000);
const _: () = assert!(DUPLICATE_REFUSAL_FINAL.as_millis() > BROKER_SESSION_TIMEOUT.as_millis());
const _: () =
    assert!(REGISTRATION_AT_START_MAX.as_millis() > 2 * DUPLICATE_REFUSAL_FINAL.as_millis());

/// One peer process as this broker's cluster listener sees it.
pub(super) struct PeerProcess {
    /// Its connections open now (a crash closes them).
    open: u32,
    last_heard: Instant,
}

/// What one registration attempt learned.
enum Attempt {
    /// Committed, or already so: this broker's image shows it once applied.
    Done,
    /// Refused: another process with this node id is live.
    Duplicate(String),
    /// Not decided; `leader_known`: this broker or a peer knows a metadata leader.
    Pending { leader_known: bool },
}

/// This broker's registration and how long it has been refused as a duplicate.
struct Registration {
    me: BrokerMeta,
    refused_since: Option<Instant>,
}

impl Registration {
    /// Notes a duplicate refusal; `Some(message)` once refusals have lasted long enough
    /// to be final.
    fn refused(&mut self, message: String) -> Option<String> {
        let since = *self.refused_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= DUPLICATE_REFUSAL_FINAL {
            return Some(message);
        }
        tracing::info!(
            node = self.me.id,
            reason = %message,
            "registration refused: another process with this node id was heard from; \
             retrying until the session timeout rules out a crashed predecessor"
        );
        None
    }
}

impl Quorum {
    pub(super) fn process_connected(&self, p: (i32, u64)) {
        let mut procs = self.processes.borrow_mut();
        let e = procs.entry(p).or_insert(PeerProcess {
            open: 0,
            last_heard: Instant::now(),
        });
        e.open += 1;
        e.last_heard = Instant::now();
        tracing::debug!(
            node = p.0,
            incarnation = p.1,
            open = e.open,
            "peer process connected"
        );
    }

    pub(super) fn process_heard(&self, p: (i32, u64)) {
        if let Some(e) = self.processes.borrow_mut().get_mut(&p) {
            e.last_heard = Instant::now();
        }
    }

    pub(super) fn process_closed(&self, p: (i32, u64)) {
        let mut procs = self.processes.borrow_mut();
        if let Some(e) = procs.get_mut(&p) {
            e.open -= 1;
            tracing::debug!(
                node = p.0,
                incarnation = p.1,
                open = e.open,
                "peer process disconnected"
            );
            // A process with no connection is not live: forgetting it bounds the map.
            if e.open == 0 {
                procs.remove(&p);
            }
        }
    }

    /// Incarnations of node `id` live as this broker sees them: connected to its cluster
    /// listener and heard from within the session timeout; this process for its own id.
    pub(super) fn live_incarnations(&self, id: i32) -> Vec<u64> {
        let mut live: Vec<u64> = self
            .processes
            .borrow()
            .iter()
            .filter(|((n, _), p)| {
                *n == id && p.open > 0 && p.last_heard.elapsed() < BROKER_SESSION_TIMEOUT
            })
            .map(|((_, inc), _)| *inc)
            .collect();
        if id == self.node_id {
            live.push(crate::replication::incarnation());
        }
        live
    }

    /// A broker that does not lead answers a forwarded command: retry at the leader (named
    /// when known); but a registration it can already tell is a duplicate is refused here,
    /// since the process asking may hear no Raft traffic at all (it is sent to the
    /// voter address of its node id, the live process's).
    pub(super) fn answer_not_leader(&self, shard: &Shard, cmd: &MetaCommand) -> ForwardReply {
        if let MetaCommand::RegisterBroker(b) = cmd {
            let live = self.live_incarnations(b.id);
            if let Some(f) = duplicate_registration(&shard.image(), b, &live) {
                return Ok((MetaReply::RegisterBroker(Err(f)), 0));
            }
        }
        Err(ForwardFailure {
            retry: true,
            message: "not the metadata leader".into(),
            leader: self.leader(),
        })
    }

    /// One try at committing this broker's registration `me`: through the leader when
    /// this broker knows it, else by asking every peer at once (only the leader decides;
    /// the others name it, or refuse a duplicate).
    async fn register_attempt(
        self: &Rc<Self>,
        shard: &Rc<Shard>,
        me: &BrokerMeta,
        deadline: Instant,
    ) -> Attempt {
        let cmd = MetaCommand::RegisterBroker(me.clone());
        let answer = |r: Result<MetaReply, ForwardFailure>| match r {
            Ok(MetaReply::RegisterBroker(Err((code, m))))
                if code == ec::DUPLICATE_BROKER_REGISTRATION =>
            {
                Attempt::Duplicate(m)
            }
            Ok(_) => Attempt::Done,
            // A peer naming this broker's own id as leader may only not have noticed a
            // crashed predecessor yet; a live one it would have refused as a duplicate.
            Err(f) => {
                tracing::debug!(error = %f.message, leader = ?f.leader, "registration not decided");
                Attempt::Pending {
                    leader_known: f.leader.is_some(),
                }
            }
        };
        if self.leader_ready.get() {
            return answer(self.decide_and_commit(shard, cmd).await.map(|(r, _)| r));
        }
        match self.leader() {
            Some(l) if l != self.node_id => answer(self.forward(l, &cmd, deadline).await),
            // Elected, not yet ready to decide.
            Some(_) => Attempt::Pending { leader_known: true },
            None => {
                // A peer that is down must not hold the round up for long.
                let deadline = deadline.min(Instant::now() + REGISTRATION_PROBE_MAX);
                let asks = self.peers.keys().map(|p| self.forward(*p, &cmd, deadline));
                let mut leader_known = false;
                for a in futures::future::join_all(asks)
                    .await
                    .into_iter()
                    .map(answer)
                {
                    match a {
                        Attempt::Pending { leader_known: k } => leader_known |= k,
                        decided => return decided,
                    }
                }
                Attempt::Pending {
                    leader_known: leader_known || self.leader().is_some(),
                }
            }
        }
    }

    /// Registers this broker before it reports ready, and refuses to start
    /// (`StartRefused`) while another process with its node id is live: that one
    /// registered from its own address and serves; two would split the partitions' and
    /// the quorum's traffic. A crashed predecessor counts as live until the session
    /// timeout, so a quick restart waits at most `DUPLICATE_REFUSAL_FINAL` here.
    /// Returns without a registration when no broker knows a metadata leader (the
    /// cluster is forming) or after `REGISTRATION_AT_START_MAX`; it is then kept trying
    /// in the background.
    pub async fn register_at_start(self: &Rc<Self>, shard: &Rc<Shard>) -> anyhow::Result<()> {
        let mut reg = Registration {
            me: BrokerMeta {
                id: shard.config.node_id,
                host: shard.config.advertised_host.clone(),
                port: shard.config.advertised_port,
                incarnation: crate::replication::incarnation(),
            },
            refused_since: None,
        };
        let give_up = Instant::now() + REGISTRATION_AT_START_MAX;
        loop {
            if shard.image().brokers.get(&reg.me.id) == Some(&reg.me) {
                tracing::info!(node = reg.me.id, host = %reg.me.host, port = reg.me.port, "broker registered");
                return Ok(());
            }
            let now = Instant::now();
            if now >= give_up {
                tracing::warn!("registration not committed yet; starting anyway, still trying");
                break;
            }
            match self.register_attempt(shard, &reg.me, give_up).await {
                Attempt::Done => {}
                Attempt::Duplicate(m) => {
                    if let Some(m) = reg.refused(m) {
                        return Err(StartRefused(m).into());
                    }
                }
                Attempt::Pending {
                    leader_known: false,
                } if reg.refused_since.is_none() => {
                    tracing::info!("no metadata leader yet; registering once one is elected");
                    break;
                }
                Attempt::Pending { .. } => {}
            }
            glommio::timer::sleep(REGISTRATION_RETRY).await;
        }
        glommio::spawn_local(register(self.clone(), shard.clone(), reg)).detach();
        Ok(())
    }
}

/// After a start that went on without its registration (no metadata leader yet), keeps
/// trying until it is in the image. A refusal as a duplicate that becomes final ends the
/// process (exit 2, as at start): two processes with one node id must not both serve.
async fn register(q: Rc<Quorum>, shard: Rc<Shard>, mut reg: Registration) {
    loop {
        if shard.image().brokers.get(&reg.me.id) == Some(&reg.me) {
            tracing::info!(node = reg.me.id, host = %reg.me.host, port = reg.me.port, "broker registered");
            return;
        }
        let deadline = Instant::now() + COMMIT_TIMEOUT;
        if let Attempt::Duplicate(m) = q.register_attempt(&shard, &reg.me, deadline).await {
            if let Some(m) = reg.refused(m) {
                tracing::error!("{m}");
                eprintln!("runnel: {m}");
                std::process::exit(2);
            }
        }
        glommio::timer::sleep(REGISTRATION_RETRY).await;
    }
}
