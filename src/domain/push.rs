//! Push wake-ups: a device with no live socket on any node is woken when a durable event (a
//! message, a read receipt, an envelope, a call ring) waits for it. The push carries no
//! content, sender or conversation: the device connects and drains its queue.
//!
//! Routing never waits for a push service: the event's path only looks at what this node
//! remembers and hands the wake-up to a bounded queue (dropped and counted when full). One task
//! then, per wake-up: reads which devices registered, drops those with a socket here or (in a
//! cluster) on another node, and claims each remaining device in the database. The claim
//! coalesces: a device already woken, that has not connected since, is not woken again before
//! `PUSH_MIN_INTERVAL`; and only one node's claim wins. Each claimed push is sent by a task of
//! its own (a bounded number at once), retried with backoff on 429/5xx/timeouts, and the
//! registration is removed when the service says it is gone.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc};

use super::keys::{DEFAULT_DEVICE_ID, MAX_DEVICE_ID};
use crate::{
    AppState,
    auth::TokenClaims,
    broker::Control,
    error::{Error, Result},
    model::{UserId, now},
    push::{Outcome, Pushers, Target, Urgency, endpoint, webpush::Keys},
};

/// Pushes in flight at once; past it the queue waits (and, full, drops).
const SENDS_AT_ONCE: usize = 64;
/// Attempts per push (the first and the retries).
const ATTEMPTS: u32 = 4;
/// First pause before a retry, doubled after each.
const RETRY_FIRST: Duration = Duration::from_secs(1);
/// Longest pause before a retry, whatever `Retry-After` says.
const RETRY_MAX: Duration = Duration::from_secs(60);
/// A device claimed (or found claimed) this recently is not asked about again: a burst of
/// events costs one claim per node, not one per event.
const RECLAIM_AFTER: Duration = Duration::from_secs(1);
/// Wake-ups taken from the queue at once (a burst for one user is handled once).
const BATCH: usize = 256;
/// Longest endpoint or token kept.
const MAX_TOKEN_LEN: usize = 4096;

/// Which of a user's devices an event is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Devices {
    /// Every device (inbox events, call rings: every device shows them).
    All,
    /// One device (its envelope).
    One(i64),
}

impl Devices {
    fn includes(self, device: i64) -> bool {
        match self {
            Self::All => true,
            Self::One(one) => one == device,
        }
    }
}

#[derive(Debug)]
struct Wake {
    user: UserId,
    devices: Devices,
    urgency: Urgency,
}

/// The wake-up queue, its sending side, and what this node remembers.
pub struct Waker {
    queue: mpsc::Sender<Wake>,
    /// Taken by the task that sends (see `run`).
    pending: Mutex<Option<mpsc::Receiver<Wake>>>,
    pushers: Pushers,
    min_interval: Duration,
    /// When this node last claimed (or found claimed) each device: see `RECLAIM_AFTER`.
    claimed: DashMap<(UserId, i64), Instant>,
    sends: Arc<Semaphore>,
    dropped: AtomicU64,
}

impl Waker {
    pub fn new(pushers: Pushers, queue_len: usize, min_interval: Duration) -> Self {
        let (queue, pending) = mpsc::channel(queue_len);
        Self {
            queue,
            pending: Mutex::new(Some(pending)),
            pushers,
            min_interval,
            claimed: DashMap::new(),
            sends: Arc::new(Semaphore::new(SENDS_AT_ONCE)),
            dropped: AtomicU64::new(0),
        }
    }

    /// The deployment's VAPID public key (base64url), for `GET /api/push/vapid`.
    pub fn vapid_public_key(&self) -> &str {
        self.pushers.vapid.public_key()
    }

    /// Wake-ups waiting to be handled.
    pub fn queued(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }
}

/// A durable event for `devices` of `user` was committed: wake those with no socket. Never
/// waits: this is on the routing path.
pub fn wake(state: &AppState, user: UserId, devices: Devices, urgency: Urgency) {
    // What this node knows for sure spares the queue: no registration, or every registered
    // device connected here.
    if let Some(registered) = state.store.push().cached_devices(user) {
        let asleep = registered
            .iter()
            .any(|d| devices.includes(*d) && !state.hub.has_device(user, *d));
        if !asleep {
            return;
        }
    }
    let waker = &state.push;
    let wake = Wake {
        user,
        devices,
        urgency,
    };
    match waker.queue.try_send(wake) {
        Ok(()) => crate::metrics::push_queue(waker.queued()),
        Err(mpsc::error::TrySendError::Full(_)) => {
            crate::metrics::push_dropped();
            // Logged on the first drop and every 1,000th after, so a flood cannot flood the log.
            if (waker.dropped.fetch_add(1, Ordering::Relaxed)).is_multiple_of(1000) {
                tracing::warn!(
                    queue = state.config.push_queue,
                    "push queue full: wake-ups dropped (PUSH_QUEUE)"
                );
            }
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {}
    }
}

/// `device` of `user` opened a socket on this node: its next wake-up is not held back by one
/// this node sent before (the database's mark is cleared by the socket's writer, see
/// `connected`).
pub fn socket_opened(state: &AppState, user: UserId, device: i64) {
    state.push.claimed.remove(&(user, device));
}

/// `device` of `user` connected and was woken before: it may be woken again at once.
pub async fn connected(state: &AppState, user: UserId, device: i64) -> Result<()> {
    state.store.push().connected(user, device).await
}

/// Handles wake-ups until the server stops.
pub async fn run(state: AppState) {
    let Some(mut queue) = state.push.pending.lock().ok().and_then(|mut p| p.take()) else {
        return;
    };
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        batch.clear();
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            n = queue.recv_many(&mut batch, BATCH) => if n == 0 { return },
        }
        crate::metrics::push_queue(state.push.queued());
        // One wake-up per user and device set, the most urgent.
        let mut wakes: HashMap<(UserId, Devices), Urgency> = HashMap::new();
        for wake in batch.drain(..) {
            let urgency = wakes
                .entry((wake.user, wake.devices))
                .or_insert(wake.urgency);
            if wake.urgency == Urgency::High {
                *urgency = Urgency::High;
            }
        }
        for ((user, devices), urgency) in wakes {
            if let Err(e) = wake_now(&state, user, devices, urgency).await {
                e.context("waking a device").log_if_internal();
            }
        }
        forget_old_claims(&state);
    }
}

async fn wake_now(
    state: &AppState,
    user: UserId,
    devices: Devices,
    urgency: Urgency,
) -> Result<()> {
    let waker = &state.push;
    let registered = state.store.push().devices(user).await?;
    let mut asleep: Vec<i64> = (registered.iter().copied())
        .filter(|d| devices.includes(*d) && !state.hub.has_device(user, *d))
        .filter(|d| {
            // A call ring is not held back by a recent claim: it wakes now or never.
            urgency == Urgency::High
                || waker
                    .claimed
                    .get(&(user, *d))
                    .is_none_or(|at| at.elapsed() >= RECLAIM_AFTER)
        })
        .collect();
    if asleep.is_empty() {
        return Ok(());
    }
    // Redis unable to tell: wake anyway (a spare wake-up costs less than a missed one).
    if let Some(broker) = state.hub.broker()
        && let Some(elsewhere) = broker.devices_on_other_nodes(user).await
    {
        asleep.retain(|d| !elsewhere.contains(d));
    }
    for device in asleep {
        waker.claimed.insert((user, device), Instant::now());
        let at = now();
        let interval = chrono::Duration::from_std(waker.min_interval).unwrap_or_default();
        // A ring claims past the interval: it must not wait for the next one.
        let since = if urgency == Urgency::High {
            at
        } else {
            at - interval
        };
        let Some(target) = state.store.push().claim(user, device, at, since).await? else {
            continue;
        };
        let Ok(permit) = waker.sends.clone().acquire_owned().await else {
            return Ok(());
        };
        let state = state.clone();
        tokio::spawn(async move {
            deliver(&state, user, device, &target, urgency).await;
            drop(permit);
        });
    }
    Ok(())
}

/// Sends one push, retrying what is worth retrying, and acts on the answer.
async fn deliver(state: &AppState, user: UserId, device: i64, target: &Target, urgency: Urgency) {
    let kind = target.kind();
    let mut pause = RETRY_FIRST;
    for attempt in 1..=ATTEMPTS {
        match state.push.pushers.send(target, urgency).await {
            Outcome::Sent => {
                crate::metrics::push_sent(kind);
                return;
            }
            Outcome::Gone => {
                crate::metrics::push_removed(kind);
                match state.store.push().remove_gone(user, device, target).await {
                    Ok(_) => push_changed(state, user),
                    Err(e) => e
                        .context("removing a dead push registration")
                        .log_if_internal(),
                }
                tracing::info!(%user, device, kind, "push registration gone: removed");
                return;
            }
            Outcome::Failed(reason) => {
                crate::metrics::push_failed(kind);
                tracing::warn!(%user, device, kind, %reason, "push refused");
                return;
            }
            Outcome::Retry { after } if attempt < ATTEMPTS => {
                crate::metrics::push_retried(kind);
                tokio::select! {
                    _ = state.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(after.unwrap_or(pause).min(RETRY_MAX)) => {}
                }
                pause = (pause * 2).min(RETRY_MAX);
            }
            Outcome::Retry { .. } => {
                crate::metrics::push_failed(kind);
                tracing::warn!(%user, device, kind, attempts = ATTEMPTS, "push service kept failing: push given up");
            }
        }
    }
}

/// Forgets the claims too old to hold anything back, now and then.
fn forget_old_claims(state: &AppState) {
    let claimed = &state.push.claimed;
    if claimed.len() > 10_000 {
        claimed.retain(|_, at| at.elapsed() < RECLAIM_AFTER);
    }
}

/// A push registration as a device sends it.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum PushRegistration {
    /// Web Push (RFC 8030/8291/8292); also UnifiedPush distributors that take Web Push.
    Webpush { endpoint: String, keys: WebPushKeys },
    /// A UnifiedPush endpoint taking plain POSTs.
    Unifiedpush { endpoint: String },
    /// An FCM registration token (when the server has FCM credentials).
    Fcm { token: String },
    /// An APNs device token (when the server has APNs credentials), and the app's bundle id
    /// when not the server's `APNS_TOPIC`.
    Apns {
        token: String,
        #[serde(default)]
        topic: Option<String>,
    },
}

/// A Web Push subscription's keys, as `PushSubscription.toJSON()` gives them (base64url).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct WebPushKeys {
    /// The subscription's P-256 public key (65 bytes, uncompressed).
    pub p256dh: String,
    /// Its 16-byte authentication secret.
    pub auth: String,
}

/// A device's push registration, as stored.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PushRegistered {
    pub device_id: i64,
    /// `webpush`, `unifiedpush`, `fcm` or `apns`.
    pub kind: &'static str,
}

/// Whether the session `claims` may manage `device`'s push registration: a device-bound
/// session only its own device; an unbound one (the app, device 1) any of the user's.
pub fn check_device(claims: &TokenClaims, device: i64) -> Result<()> {
    if !(1..=MAX_DEVICE_ID).contains(&device) {
        return Err(Error::NotFound("device"));
    }
    match claims.device {
        Some(own) if own != device => Err(Error::Refused {
            code: "wrong_device",
            message: "a device-bound session may only manage its own device's pushes",
        }),
        _ => Ok(()),
    }
}

/// Registers how `device` of `user` is woken (replacing what it had), after checking it: the
/// kind is enabled, the endpoint is safe to call, the keys decode.
pub async fn register(
    state: &AppState,
    claims: &TokenClaims,
    device: i64,
    registration: PushRegistration,
) -> Result<PushRegistered> {
    let user = claims.user_id;
    let target = target(state, registration).await?;
    // The session's own device (the app's is 1) may register before it uploaded keys.
    if claims.device.unwrap_or(DEFAULT_DEVICE_ID) == device {
        super::devices::register(state, user, device, None).await?;
    }
    if !(state.store.push())
        .set(user, device, &target, now())
        .await?
    {
        return Err(Error::NotFound("device"));
    }
    push_changed(state, user);
    tracing::info!(%user, device, kind = target.kind(), "push registered");
    Ok(PushRegistered {
        device_id: device,
        kind: target.kind(),
    })
}

/// Removes `device`'s push registration (nothing to remove is fine).
pub async fn unregister(state: &AppState, user: UserId, device: i64) -> Result<()> {
    if state.store.push().remove(user, device).await? {
        push_changed(state, user);
    }
    Ok(())
}

async fn target(state: &AppState, registration: PushRegistration) -> Result<Target> {
    let pushers = &state.push.pushers;
    let kind = match &registration {
        PushRegistration::Webpush { .. } => "webpush",
        PushRegistration::Unifiedpush { .. } => "unifiedpush",
        PushRegistration::Fcm { .. } => "fcm",
        PushRegistration::Apns { .. } => "apns",
    };
    if !pushers.supports(kind) {
        return Err(Error::Invalid {
            code: "push_unavailable",
            message: format!("this server is not configured to send {kind} pushes"),
        });
    }
    let target = match registration {
        PushRegistration::Webpush { endpoint, keys } => {
            Keys::decode(&keys.p256dh, &keys.auth).map_err(Error::invalid)?;
            Target::WebPush {
                endpoint,
                p256dh: keys.p256dh,
                auth: keys.auth,
            }
        }
        PushRegistration::Unifiedpush { endpoint } => Target::UnifiedPush { endpoint },
        PushRegistration::Fcm { token } => Target::Fcm {
            token: checked_token(token)?,
        },
        PushRegistration::Apns { token, topic } => Target::Apns {
            token: checked_token(token).and_then(|token| {
                // APNs device tokens are hexadecimal (they go into the request's path).
                if token.bytes().all(|b| b.is_ascii_hexdigit()) {
                    Ok(token)
                } else {
                    Err(Error::invalid("an APNs token is hexadecimal"))
                }
            })?,
            topic: topic.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()),
        },
    };
    if let Some(url) = target.endpoint() {
        endpoint::check(url, pushers.allow_insecure())
            .await
            .map_err(|e| Error::Invalid {
                code: "unsafe_endpoint",
                message: e.to_string(),
            })?;
    }
    Ok(target)
}

fn checked_token(token: String) -> Result<String> {
    let token = token.trim().to_owned();
    if token.is_empty() || token.len() > MAX_TOKEN_LEN || token.chars().any(char::is_control) {
        return Err(Error::invalid(format!(
            "token must be 1 to {MAX_TOKEN_LEN} characters, without control characters"
        )));
    }
    Ok(token)
}

/// Other nodes forget what they cached of `user`'s registrations.
fn push_changed(state: &AppState, user: UserId) {
    if let Some(broker) = state.hub.broker() {
        broker.control(Control::PushChanged(user));
    }
}
