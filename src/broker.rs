//! Cluster mode: fan-out between nodes and cross-node presence through Redis.
//!
//! - **Fan-out.** Every frame the hub sends is also published on the user's channel
//!   `{prefix}:u:{user}`, tagged with this node's id. Each node subscribes to the channels of
//!   the users connected to it (and unsubscribes when their last socket closes), and queues what
//!   it receives on their sockets, skipping its own publications. Pub/sub is only a doorbell:
//!   inbox events (messages, read receipts) are written from the durable copy in PostgreSQL, so
//!   one lost on the way is fetched by the socket's writer at the next event, at the next
//!   subscription, when Redis comes back (every socket refills), or at reconnect. Ephemeral
//!   frames carry their key (`e <key>`), so the receiving node coalesces them as the hub does.
//!   Delivery receipts are tagged `r`, so the receiving node drops rather than closes a socket
//!   whose queue is full, as the hub does.
//! - **Presence.** `{prefix}:online:{user}:{node}` exists while `user` has a socket on `node`;
//!   each node refreshes its keys (TTL `PRESENCE_TTL`), its liveness key `{prefix}:node:{node}`,
//!   its membership in `{prefix}:nodes` and the set of its users `{prefix}:node:{node}:users`.
//!   A node that dies stops refreshing; a surviving node finds its liveness key gone, claims it
//!   (one `SREM` wins) and reports those of its users no other node holds as
//!   [`NodeChange::Lost`]. The broker never calls the domain: `domain::presence::follow_nodes`
//!   consumes these reports (and [`NodeChange::Back`]) and changes presence.
//! - **Control.** Revocations (logout, password change, account deletion...) and refills are
//!   published on `{prefix}:control`, which every node subscribes to (see `control.rs`). A
//!   doorbell dropped because the publish queue was full asks for a refill of its user there,
//!   so that a recipient on another node does not wait for their next event.
//! - **Outage.** While Redis is unreachable the node serves its own users, drops publications
//!   (counted), says so once in the log and on `/health`, and retries every second; when Redis
//!   answers again it resubscribes, refreshes its presence keys and has every socket refill from
//!   the store, which covers the gap.

use std::{
    collections::HashSet,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use futures_util::StreamExt;
use redis::{
    AsyncCommands,
    aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink},
};
use serde::Serialize;
use tokio::{
    sync::{mpsc, oneshot},
    time::{Instant, timeout},
};
use uuid::Uuid;

mod control;

pub use control::Control;

use self::control::ControlQueue;
use crate::{
    AppState,
    events::{CloseReason, EphemeralKey, Frame},
    model::UserId,
};

/// Publications sent to Redis in one pipeline at most.
const PUBLISH_BATCH: usize = 256;
/// Longest a Redis operation may take before Redis counts as unreachable.
const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between attempts to reach Redis again.
const RETRY: Duration = Duration::from_secs(1);
/// Channels subscribed to in one command when (re)subscribing a whole node.
const SUBSCRIBE_CHUNK: usize = 512;

/// Counters for `/health` and metrics.
#[derive(Debug, Default)]
pub struct Stats {
    /// Frames published for other nodes.
    pub published: AtomicU64,
    /// Frames not published (Redis down or the outbox full); inbox events among them are
    /// recovered from the store.
    pub dropped: AtomicU64,
    /// Frames received from other nodes.
    pub received: AtomicU64,
    /// Times Redis became unreachable.
    pub outages: AtomicU64,
}

/// A snapshot of the broker's state, as `/health` shows it.
#[derive(Debug, Serialize)]
pub struct Status {
    pub status: &'static str,
    pub node: String,
    pub published: u64,
    pub dropped: u64,
    pub received: u64,
    pub outages: u64,
}

pub struct Broker {
    node: String,
    prefix: String,
    ttl: Duration,
    client: redis::Client,
    commands: ConnectionManager,
    /// Publications waiting for the publisher task (`REDIS_PUBLISH_QUEUE` of them); beyond it
    /// they are dropped (and counted), and their users' sockets refill.
    outbox: mpsc::Sender<(UserId, String)>,
    control: ControlQueue,
    interest: mpsc::UnboundedSender<Interest>,
    /// Taken by the tasks when the server starts.
    receivers: Mutex<Option<Receivers>>,
    /// What the domain must hear about nodes (see [`NodeChange`]).
    node_changes: mpsc::UnboundedSender<NodeChange>,
    up: AtomicBool,
    pub stats: Stats,
}

struct Receivers {
    outbox: mpsc::Receiver<(UserId, String)>,
    interest: mpsc::UnboundedReceiver<Interest>,
    node_changes: mpsc::UnboundedReceiver<NodeChange>,
}

/// What the broker learned about other nodes that presence depends on; the domain acts on it
/// (the broker sits below the domain and never calls it). Rare: a node's death or an outage's
/// end, so the channel is unbounded.
#[derive(Debug, PartialEq, Eq)]
pub enum NodeChange {
    /// `user` was connected to a node that stopped without saying so, and to no other node.
    Lost(UserId),
    /// Redis answers again, or this node found itself swept as dead: another node may have
    /// taken these local users offline meanwhile.
    Back(Vec<UserId>),
}

/// What a refresh of this node's keys found.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Refreshed {
    /// The node was in the cluster's set, as it should be.
    Member,
    /// The node was not in the set: it is joining, or another node took it for dead (it
    /// refreshed later than the TTL: a stall, a slow Redis) and took its users offline.
    Joined,
}

/// "Subscribe or unsubscribe `user` as their sockets here call for", with whom to tell once
/// done.
type Interest = (UserId, Option<oneshot::Sender<()>>);

impl Broker {
    /// Prepares the connection (lazily: a node starts even while Redis is down).
    pub fn new(url: &str, prefix: &str, ttl: Duration, queue: usize) -> anyhow::Result<Self> {
        let client = redis::Client::open(url).context("REDIS_URL is invalid")?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(OP_TIMEOUT))
            .set_response_timeout(Some(OP_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(RETRY);
        let commands = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .context("preparing the Redis connection")?;
        let (outbox, outbox_rx) = mpsc::channel(queue.max(1));
        let (interest, interest_rx) = mpsc::unbounded_channel();
        let (node_changes, node_changes_rx) = mpsc::unbounded_channel();
        Ok(Self {
            node: Uuid::new_v4().simple().to_string()[..16].to_owned(),
            prefix: prefix.to_owned(),
            ttl,
            client,
            commands,
            outbox,
            control: ControlQueue::default(),
            interest,
            receivers: Mutex::new(Some(Receivers {
                outbox: outbox_rx,
                interest: interest_rx,
                node_changes: node_changes_rx,
            })),
            node_changes,
            up: AtomicBool::new(false),
            stats: Stats::default(),
        })
    }

    /// This node's id in the cluster.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Whether Redis answers: cross-node fan-out works.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn status(&self) -> Status {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Status {
            status: if self.is_up() { "ok" } else { "down" },
            node: self.node.clone(),
            published: load(&self.stats.published),
            dropped: load(&self.stats.dropped),
            received: load(&self.stats.received),
            outages: load(&self.stats.outages),
        }
    }

    /// Queues `frame` (inbox event `seq`, if any) for publication on `user`'s channel.
    pub fn publish(&self, user: UserId, seq: Option<i64>, frame: &Frame) {
        if !self.is_up() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let payload = match seq {
            Some(seq) => format!("{} i {seq} {}", self.node, frame.as_str()),
            None => format!("{} f 0 {}", self.node, frame.as_str()),
        };
        if self.outbox.try_send((user, payload)).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            // The event is in the store, but the user's sockets elsewhere would only look at
            // their next event: have them look as soon as the queue has room again.
            if seq.is_some() {
                self.control.push(Control::Refill(user));
            }
        }
    }

    /// Queues envelope `seq` of `device`'s queue for publication on `user`'s channel; the
    /// device and the number travel in the number's place (`device.seq`).
    pub fn publish_envelope(&self, user: UserId, device: i64, seq: i64, frame: &Frame) {
        if !self.is_up() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let payload = format!("{} d {device}.{seq} {}", self.node, frame.as_str());
        if self.outbox.try_send((user, payload)).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            // Stored, but the device's sockets elsewhere would only look at its next one.
            self.control.push(Control::Refill(user));
        }
    }

    /// Queues a delivery receipt for publication on `user`'s channel (see `Hub::send_receipt`).
    pub fn publish_receipt(&self, user: UserId, frame: &Frame) {
        if !self.is_up() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let payload = format!("{} r 0 {}", self.node, frame.as_str());
        if self.outbox.try_send((user, payload)).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Queues an ephemeral frame (the latest state of `key`) for publication on `user`'s
    /// channel; the key travels in the number's place.
    pub fn publish_ephemeral(&self, user: UserId, key: EphemeralKey, frame: &Frame) {
        if !self.is_up() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let payload = format!("{} e {} {}", self.node, key.encode(), frame.as_str());
        if self.outbox.try_send((user, payload)).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Has every other node do `control` (published ahead of queued frames; kept while Redis
    /// is down, and published when it is back).
    pub fn control(&self, control: Control) {
        self.control.push(control);
    }

    /// `user`'s first socket opened or last socket closed here: (un)subscribe their channel.
    pub fn interest_changed(&self, user: UserId) {
        // Closed only once the subscriber stopped, at shutdown.
        let _ = self.interest.send((user, None));
    }

    /// Waits (within bounds) until `user`'s channel is subscribed, if Redis is up.
    async fn subscribed(&self, user: UserId) {
        if !self.is_up() {
            return;
        }
        let (done, wait) = oneshot::channel();
        if self.interest.send((user, Some(done))).is_ok() {
            let _ = timeout(OP_TIMEOUT, wait).await;
        }
    }

    fn channel(&self, user: UserId) -> String {
        format!("{}:u:{}", self.prefix, user.0)
    }

    fn control_channel(&self) -> String {
        format!("{}:control", self.prefix)
    }

    fn online_key(&self, user: UserId, node: &str) -> String {
        format!("{}:online:{}:{node}", self.prefix, user.0)
    }

    fn nodes_key(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    fn node_key(&self, node: &str) -> String {
        format!("{}:node:{node}", self.prefix)
    }

    fn node_users_key(&self, node: &str) -> String {
        format!("{}:node:{node}:users", self.prefix)
    }

    fn node_sockets_key(&self, node: &str) -> String {
        format!("{}:node:{node}:sockets", self.prefix)
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX)
    }

    /// Adds to `pipe` a key that says something is alive, expiring after the TTL unless
    /// refreshed.
    fn set_alive(&self, pipe: &mut redis::Pipeline, key: String) {
        pipe.cmd("SET")
            .arg(key)
            .arg(1)
            .arg("PX")
            .arg(self.ttl_ms())
            .ignore();
    }

    /// Adds to `pipe` the presence key of `user` on this node: its value lists the devices
    /// with a socket here (`1,2`), for the push wake-ups of the others.
    fn set_online(&self, pipe: &mut redis::Pipeline, user: UserId, devices: &[i64]) {
        let devices: Vec<String> = devices.iter().map(i64::to_string).collect();
        pipe.cmd("SET")
            .arg(self.online_key(user, &self.node))
            .arg(devices.join(","))
            .arg("PX")
            .arg(self.ttl_ms())
            .ignore();
    }

    /// Marks Redis unreachable, logging only the transition.
    fn went_down(&self, what: &str, error: &dyn std::fmt::Display) {
        if self.up.swap(false, Ordering::Relaxed) {
            self.stats.outages.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                %error,
                what,
                "Redis unreachable: serving this node's users only until it is back"
            );
        }
    }

    /// Marks Redis reachable; returns whether it was down.
    fn came_up(&self) -> bool {
        let was_up = self.up.swap(true, Ordering::Relaxed);
        if !was_up {
            tracing::info!(node = %self.node, "Redis reachable: cross-node fan-out on");
        }
        !was_up
    }

    async fn run<T>(
        &self,
        what: &str,
        op: impl Future<Output = redis::RedisResult<T>>,
    ) -> Option<T> {
        match timeout(OP_TIMEOUT, op).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(e)) => {
                self.went_down(what, &e);
                None
            }
            Err(_) => {
                self.went_down(what, &"timed out");
                None
            }
        }
    }

    /// Subscribes `user`'s channel (so that what other nodes send them from now on arrives)
    /// and sets their presence key on this node (naming the `devices` with a socket here),
    /// with this node's own keys. Called again when those devices change.
    pub async fn announce(&self, user: UserId, devices: &[i64]) {
        self.subscribed(user).await;
        let mut con = self.commands.clone();
        let mut pipe = redis::pipe();
        self.set_online(&mut pipe, user, devices);
        pipe.sadd(self.node_users_key(&self.node), user.0.to_string())
            .ignore();
        self.set_alive(&mut pipe, self.node_key(&self.node));
        pipe.sadd(self.nodes_key(), &self.node).ignore();
        self.run("announce", pipe.exec_async(&mut con)).await;
    }

    /// Drops the presence key of `user` on this node.
    pub async fn retire(&self, user: UserId) {
        let mut con = self.commands.clone();
        let mut pipe = redis::pipe();
        pipe.del(self.online_key(user, &self.node))
            .ignore()
            .srem(self.node_users_key(&self.node), user.0.to_string())
            .ignore();
        self.run("retire", pipe.exec_async(&mut con)).await;
    }

    /// Whether another live node holds a socket of `user` (`false` when Redis cannot tell).
    pub async fn online_on_other_nodes(&self, user: UserId) -> bool {
        let mut con = self.commands.clone();
        let Some(keys) = self.online_keys_elsewhere(user).await else {
            return false;
        };
        if keys.is_empty() {
            return false;
        }
        self.run("presence", con.exists::<_, u64>(keys))
            .await
            .is_some_and(|n| n > 0)
    }

    /// The presence keys `user` would have on the cluster's other nodes (`None` when Redis
    /// cannot tell).
    async fn online_keys_elsewhere(&self, user: UserId) -> Option<Vec<String>> {
        let mut con = self.commands.clone();
        let nodes: Vec<String> = self.run("presence", con.smembers(self.nodes_key())).await?;
        Some(
            (nodes.iter())
                .filter(|n| **n != self.node)
                .map(|n| self.online_key(user, n))
                .collect(),
        )
    }

    /// The devices of `user` with a socket on another live node (`None` when Redis cannot
    /// tell). A node that died keeps its keys until they expire (`PRESENCE_TTL`).
    pub async fn devices_on_other_nodes(&self, user: UserId) -> Option<Vec<i64>> {
        let mut con = self.commands.clone();
        let keys = self.online_keys_elsewhere(user).await?;
        if keys.is_empty() {
            return Some(Vec::new());
        }
        let values: Vec<Option<String>> = self.run("presence", con.mget(keys)).await?;
        Some(
            values
                .iter()
                .flatten()
                .flat_map(|devices| devices.split(',').filter_map(|d| d.parse().ok()))
                .collect(),
        )
    }

    /// Refreshes this node's keys, the number of its open sockets (for any node's
    /// `GET /api/admin/stats`) and the presence keys of its users (with their devices).
    async fn refresh(&self, users: &[(UserId, Vec<i64>)], sockets: usize) -> Option<Refreshed> {
        let mut con = self.commands.clone();
        let mut pipe = redis::pipe();
        let members: Vec<String> = users.iter().map(|(u, _)| u.0.to_string()).collect();
        pipe.atomic();
        self.set_alive(&mut pipe, self.node_key(&self.node));
        pipe.cmd("SET")
            .arg(self.node_sockets_key(&self.node))
            .arg(sockets)
            .arg("PX")
            .arg(self.ttl_ms())
            .ignore();
        pipe.sadd(self.nodes_key(), &self.node)
            .del(self.node_users_key(&self.node))
            .ignore();
        if !members.is_empty() {
            pipe.sadd(self.node_users_key(&self.node), &members)
                .ignore();
        }
        for (user, devices) in users {
            self.set_online(&mut pipe, *user, devices);
        }
        let (added,): (u64,) = self.run("refresh", pipe.query_async(&mut con)).await?;
        Some(if added == 0 {
            Refreshed::Member
        } else {
            Refreshed::Joined
        })
    }

    /// The open sockets of every live node, as each last published them (every third of
    /// `PRESENCE_TTL`); `None` when Redis cannot tell. A node that stopped drops out once its
    /// count expires.
    pub async fn sockets_per_node(&self) -> Option<Vec<(String, u64)>> {
        let mut con = self.commands.clone();
        let mut nodes: Vec<String> = self.run("stats", con.smembers(self.nodes_key())).await?;
        nodes.sort();
        if nodes.is_empty() {
            return Some(Vec::new());
        }
        let keys: Vec<String> = nodes.iter().map(|n| self.node_sockets_key(n)).collect();
        // MGET even for one key (`mget` would send GET, whose nil reads as no value at all).
        let counts: Vec<Option<u64>> = self
            .run("stats", redis::cmd("MGET").arg(keys).query_async(&mut con))
            .await?;
        Some(
            nodes
                .into_iter()
                .zip(counts)
                .filter_map(|(node, count)| Some((node, count?)))
                .collect(),
        )
    }

    /// Leaves the cluster (graceful shutdown, after its sockets closed): drops this node's
    /// liveness key (and its socket count), so that a surviving node sweeps it at once and
    /// takes offline whichever of its users did not reconnect elsewhere (even if this node
    /// could not record it itself).
    pub async fn leave(&self) {
        let mut con = self.commands.clone();
        let keys = [self.node_key(&self.node), self.node_sockets_key(&self.node)];
        self.run("leave", con.del::<_, ()>(&keys)).await;
    }

    /// Users of nodes that stopped refreshing their keys, claimed by this node (each dead node
    /// is claimed by one node only), for the caller to take offline.
    async fn claim_dead_nodes(&self) -> Option<Vec<UserId>> {
        let mut con = self.commands.clone();
        let nodes: Vec<String> = self.run("sweep", con.smembers(self.nodes_key())).await?;
        let mut orphans = Vec::new();
        for node in nodes.iter().filter(|n| **n != self.node) {
            let alive: bool = self.run("sweep", con.exists(self.node_key(node))).await?;
            if alive {
                continue;
            }
            let claimed: u64 = self.run("sweep", con.srem(self.nodes_key(), node)).await?;
            if claimed == 0 {
                continue; // another node got it
            }
            let users_key = self.node_users_key(node);
            let users: Vec<String> = self.run("sweep", con.smembers(&users_key)).await?;
            self.run("sweep", con.del::<_, ()>(&users_key)).await?;
            tracing::warn!(dead = %node, users = users.len(), "a node stopped: taking its users offline");
            orphans.extend(
                users
                    .iter()
                    .filter_map(|u| u.parse::<Uuid>().ok())
                    .map(UserId),
            );
        }
        Some(orphans)
    }

    /// Queues a frame another node published on this node's sockets, or does what another
    /// node asked on the control channel.
    fn receive(&self, state: &AppState, message: &redis::Msg) {
        if message.get_channel_name() == self.control_channel() {
            return self.obey(state, message);
        }
        let Some(user) = message
            .get_channel_name()
            .rsplit(':')
            .next()
            .and_then(|id| id.parse::<Uuid>().ok())
            .map(UserId)
        else {
            return;
        };
        let Ok(payload) = std::str::from_utf8(message.get_payload_bytes()) else {
            return;
        };
        let mut parts = payload.splitn(4, ' ');
        let (Some(node), Some(kind), Some(seq), Some(frame)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return;
        };
        if node == self.node {
            return;
        }
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        let frame = Frame::from(frame.to_owned());
        if kind == "e" {
            if let Some(key) = EphemeralKey::decode(seq) {
                state.hub.send_ephemeral_local(user, key, &frame);
            }
            return;
        }
        if kind == "d" {
            let numbers = seq.split_once('.');
            if let Some((Ok(device), Ok(seq))) = numbers.map(|(d, s)| (d.parse(), s.parse())) {
                state.hub.send_envelope_local(user, device, seq, &frame);
            }
            return;
        }
        match (kind, seq.parse::<i64>()) {
            ("i", Ok(seq)) => state.hub.send_inbox_local(user, seq, &frame),
            ("r", _) => state.hub.send_receipt_local(user, &frame),
            _ => state.hub.send_local(user, &frame),
        };
    }

    /// Does what another node asked on the control channel.
    fn obey(&self, state: &AppState, message: &redis::Msg) {
        let Some((node, control)) = std::str::from_utf8(message.get_payload_bytes())
            .ok()
            .and_then(Control::decode)
        else {
            return;
        };
        if node == self.node {
            return;
        }
        match control {
            Control::RevokeSession(session) => {
                state.hub.close_session_here(session, CloseReason::Revoked);
            }
            // Not every socket of the user: a password change answers with a new session, whose
            // socket may open here before this message arrives. The store tells which.
            Control::RevokeUser(user) => {
                tokio::spawn(close_revoked(state.clone(), Some(user)));
            }
            Control::CloseDevice(user, device) => {
                state
                    .hub
                    .close_device_here(user, device, CloseReason::Revoked);
            }
            Control::AccountDeleted(user) => {
                state.store.conversations().forget_conversations_of(user);
                state.hub.close_user_here(user, CloseReason::Revoked);
            }
            Control::PushChanged(user) => state.store.push().forget(user),
            Control::BlocksChanged(user) => state.store.blocks().forget(user),
            Control::Refill(user) => state.hub.refill(user),
            Control::RefillAll => state.hub.refill_all(),
        }
    }
}

/// Starts the broker's tasks (publisher, subscriber, presence upkeep) when in cluster mode, and
/// returns the node changes they report, for the domain to consume.
pub fn spawn(state: &AppState) -> Option<mpsc::UnboundedReceiver<NodeChange>> {
    let broker = state.hub.broker()?;
    let receivers = broker.receivers.lock().ok().and_then(|mut r| r.take())?;
    tokio::spawn(publisher(state.clone(), receivers.outbox));
    tokio::spawn(subscriber(state.clone(), receivers.interest));
    tokio::spawn(upkeep(state.clone()));
    Some(receivers.node_changes)
}

/// Sends queued publications in pipelines, control messages first.
async fn publisher(state: AppState, mut outbox: mpsc::Receiver<(UserId, String)>) {
    let Some(broker) = state.hub.broker() else {
        return;
    };
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            () = broker.control.ready.notified() => {}
            n = outbox.recv_many(&mut batch, PUBLISH_BATCH) => if n == 0 {
                return;
            },
        };
        let controls = broker.control.take();
        if batch.is_empty() && controls.is_empty() {
            continue;
        }
        let count = batch.len() as u64;
        if broker.is_up() {
            let mut pipe = redis::pipe();
            let channel = broker.control_channel();
            for control in &controls {
                pipe.publish(&channel, control.encode(&broker.node))
                    .ignore();
            }
            for (user, payload) in batch.drain(..) {
                pipe.publish(broker.channel(user), payload).ignore();
            }
            let mut con = broker.commands.clone();
            if broker
                .run("publish", pipe.exec_async(&mut con))
                .await
                .is_some()
            {
                broker.stats.published.fetch_add(count, Ordering::Relaxed);
                continue;
            }
        }
        // Revocations wait for Redis (`check_recovery` wakes this task); frames are dropped.
        broker.control.put_back(controls);
        batch.clear();
        broker.stats.dropped.fetch_add(count, Ordering::Relaxed);
    }
}

/// Keeps one subscription connection: the channels of this node's users, and what comes on
/// them. Reconnects (and resubscribes) when it breaks.
async fn subscriber(state: AppState, mut interest: mpsc::UnboundedReceiver<Interest>) {
    let Some(broker) = state.hub.broker() else {
        return;
    };
    let mut subscribed: HashSet<UserId> = HashSet::new();
    loop {
        let connected = tokio::select! {
            _ = state.shutdown.cancelled() => return,
            c = timeout(OP_TIMEOUT, broker.client.get_async_pubsub()) => c,
        };
        let pubsub = match connected {
            Ok(Ok(pubsub)) => pubsub,
            Ok(Err(e)) => {
                broker.went_down("subscribe", &e);
                if pause(&state).await {
                    return;
                }
                continue;
            }
            Err(_) => {
                broker.went_down("subscribe", &"timed out");
                if pause(&state).await {
                    return;
                }
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        subscribed.clear();
        let users = state.hub.local_users();
        let mut ok = broker
            .run("subscribe", sink.subscribe(broker.control_channel()))
            .await
            .is_some();
        for chunk in users.chunks(SUBSCRIBE_CHUNK) {
            if !ok {
                break;
            }
            let channels: Vec<String> = chunk.iter().map(|u| broker.channel(*u)).collect();
            ok = broker
                .run("subscribe", sink.subscribe(channels))
                .await
                .is_some();
        }
        if !ok {
            if pause(&state).await {
                return;
            }
            continue;
        }
        subscribed.extend(users);
        // Control messages published while this node was not subscribed were lost.
        tokio::spawn(close_revoked(state.clone(), None));
        check_recovery(&state).await;
        let mut tick = tokio::time::interval(RETRY);
        loop {
            tokio::select! {
                _ = state.shutdown.cancelled() => return,
                message = stream.next() => match message {
                    Some(message) => broker.receive(&state, &message),
                    None => {
                        broker.went_down("subscription", &"connection lost");
                        break;
                    }
                },
                Some((user, done)) = interest.recv() => {
                    let ok = reconcile(&state, &mut sink, &mut subscribed, user).await;
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                    if !ok {
                        break;
                    }
                }
                _ = tick.tick() => check_recovery(&state).await,
            }
        }
        if pause(&state).await {
            return;
        }
    }
}

/// Checks the sessions with a socket here (of `user` only, if given) against the store and
/// closes the revoked ones. Checking them all (after a (re)subscription), it also forgets the
/// cached conversations and blocks: an account may have been deleted, or a block changed,
/// unheard of.
async fn close_revoked(state: AppState, user: Option<UserId>) {
    if user.is_none() {
        state.store.conversations().forget_all_conversations();
        state.store.blocks().forget_all();
    }
    let mut unchecked = state.hub.sessions_to_check(user);
    // A revocation must not be lost to a database blip: retry what could not be checked.
    while !unchecked.is_empty() {
        let mut failed = Vec::new();
        for (session, user) in unchecked {
            match state.store.security().session_active(session, user).await {
                Ok(true) => {}
                Ok(false) => state.hub.close_session_here(session, CloseReason::Revoked),
                Err(e) => {
                    if failed.is_empty() {
                        e.context("checking this node's sessions against the store")
                            .log_if_internal();
                    }
                    failed.push((session, user));
                }
            }
        }
        unchecked = failed;
        if !unchecked.is_empty() && pause(&state).await {
            return;
        }
    }
}

/// Waits `RETRY`; returns whether the server is shutting down.
async fn pause(state: &AppState) -> bool {
    tokio::select! {
        _ = state.shutdown.cancelled() => true,
        _ = tokio::time::sleep(RETRY) => false,
    }
}

/// Subscribes to `user`'s channel if they have a socket here, unsubscribes otherwise. Returns
/// `false` when the subscription connection failed.
async fn reconcile(
    state: &AppState,
    sink: &mut PubSubSink,
    subscribed: &mut HashSet<UserId>,
    user: UserId,
) -> bool {
    let Some(broker) = state.hub.broker() else {
        return true;
    };
    let wanted = state.hub.is_local(user);
    if wanted == subscribed.contains(&user) {
        return true;
    }
    let channel = broker.channel(user);
    if wanted {
        if broker
            .run("subscribe", sink.subscribe(&channel))
            .await
            .is_none()
        {
            return false;
        }
        subscribed.insert(user);
        // Whatever was published before the subscription took effect is in the store.
        state.hub.refill(user);
    } else {
        if broker
            .run("unsubscribe", sink.unsubscribe(&channel))
            .await
            .is_none()
        {
            return false;
        }
        subscribed.remove(&user);
    }
    true
}

/// While Redis counts as down, checks whether it answers again; when it does, refreshes this
/// node's presence and has every socket refill what it may have missed.
async fn check_recovery(state: &AppState) {
    let Some(broker) = state.hub.broker() else {
        return;
    };
    if broker.is_up() {
        return;
    }
    let mut con = broker.commands.clone();
    let ping = timeout(
        OP_TIMEOUT,
        redis::cmd("PING").query_async::<String>(&mut con),
    )
    .await;
    if !matches!(ping, Ok(Ok(_))) {
        return;
    }
    let users = state.hub.local_user_devices();
    if broker
        .refresh(&users, state.hub.socket_count())
        .await
        .is_none()
        || !broker.came_up()
    {
        return;
    }
    let users = users.into_iter().map(|(user, _)| user).collect();
    state.hub.refill_all();
    // The doorbells this node dropped while down were for sockets on other nodes too: they
    // refill as well. Revocations made meanwhile go out with it.
    broker.control(Control::RefillAll);
    // Another node may have taken these users offline while this one could not refresh.
    let _ = broker.node_changes.send(NodeChange::Back(users));
}

/// Refreshes this node's presence keys every third of the TTL, and takes offline the users of
/// nodes that stopped refreshing theirs.
async fn upkeep(state: AppState) {
    let Some(broker) = state.hub.broker() else {
        return;
    };
    let every = (broker.ttl / 3).max(Duration::from_millis(100));
    let mut tick = tokio::time::interval(every.min(RETRY));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut refreshed: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !broker.is_up() {
            continue;
        }
        if refreshed.is_none_or(|at| at.elapsed() >= every) {
            let users = state.hub.local_user_devices();
            let Some(found) = broker.refresh(&users, state.hub.socket_count()).await else {
                continue;
            };
            if found == Refreshed::Joined && refreshed.is_some() {
                // Swept while alive: whoever swept it took these users offline, though their
                // sockets are still open here.
                tracing::warn!(node = %broker.node, users = users.len(), "this node was taken for dead (it refreshed its keys too late): its users are online again");
                let users = users.into_iter().map(|(user, _)| user).collect();
                let _ = broker.node_changes.send(NodeChange::Back(users));
            }
            refreshed = Some(Instant::now());
        }
        let Some(orphans) = broker.claim_dead_nodes().await else {
            continue;
        };
        for user in orphans {
            if !state.hub.is_local(user) && !broker.online_on_other_nodes(user).await {
                let _ = broker.node_changes.send(NodeChange::Lost(user));
            }
        }
    }
}
