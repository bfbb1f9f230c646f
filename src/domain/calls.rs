//! Calls: the ringing → active → ended state machine, with the app's two ids per call
//! (the server's from `POST /api/calls`, the app's own from the WebSocket `call_request`).
//!
//! A call to someone who blocks the caller is *withheld*: recorded for the caller, who sees it
//! ring unanswered until it is missed, while the callee is never rung, pushed, made busy, told
//! of it or shown it (`ring`, `tell` and the store's lookups leave them out).

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use serde::Deserialize;
use uuid::Uuid;

use super::push::Devices;
use crate::{
    AppState,
    error::{Error, Result},
    events::{EphemeralKey, Event},
    model::{Call, CallId, CallStatus, CallType, UserId, now},
    push::Urgency,
    store::{CallRecord, CallRefused, NewCall},
};

const MAX_CLIENT_CALL_ID_LEN: usize = 64;

/// What a participant says about a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CallResponse {
    Accept,
    Reject,
    Busy,
    End,
}

impl CallResponse {
    fn as_str(self) -> &'static str {
        match self {
            Self::Accept => "accept",
            Self::Reject => "reject",
            Self::Busy => "busy",
            Self::End => "end",
        }
    }
}

/// `POST /api/calls`: rings the recipient with the server's call id.
pub async fn start(
    state: &AppState,
    caller: UserId,
    recipient: UserId,
    call_type: CallType,
) -> Result<Call> {
    let withheld = check_recipient(state, caller, recipient).await?;
    let call = create(
        state,
        caller,
        recipient,
        call_type,
        None,
        CallStatus::Ringing,
        withheld,
    )
    .await?
    .map_err(|_| Error::Conflict {
        code: "busy",
        message: "the caller or the recipient is already in a call",
    })?;
    ring(state, &call).await?;
    Ok(call)
}

/// WebSocket `call_request`: joins the ringing call the caller just made over REST (no second
/// ring), or creates and rings one; a busy recipient is answered `busy` right away.
pub async fn request(
    state: &AppState,
    caller: UserId,
    recipient: UserId,
    call_type: CallType,
    client_call_id: String,
) -> Result<()> {
    if client_call_id.is_empty() || client_call_id.len() > MAX_CLIENT_CALL_ID_LEN {
        return Err(Error::invalid(format!(
            "callId must be 1 to {MAX_CLIENT_CALL_ID_LEN} characters"
        )));
    }
    let withheld = check_recipient(state, caller, recipient).await?;
    let known = state
        .store
        .calls()
        .find_call(caller, &client_call_id)
        .await?;
    if known.is_some_and(|call| call.caller_id == caller && call.recipient_id == recipient) {
        return Ok(()); // a repeated request
    }
    // The id already names a live call of either party with someone else: answers under it
    // would be ambiguous, so it is refused rather than made a second call. (A withheld call
    // never reaches the callee, so their calls are nothing to it, and must not show through.)
    let parties = if withheld {
        &[caller][..]
    } else {
        &[caller, recipient][..]
    };
    for &user in parties {
        if let Some(live) = state.store.calls().live_call(user).await?
            && (live.call_id == client_call_id
                || live.client_call_id.as_deref() == Some(client_call_id.as_str()))
        {
            return Err(Error::Conflict {
                code: "call_id_taken",
                message: "this callId already names another call: pick another",
            });
        }
    }
    let at = now();
    let since = at - ring_timeout(state)?;
    let adopted =
        state
            .store
            .calls()
            .adopt_client_call_id(caller, recipient, &client_call_id, since, at);
    if adopted.await?.is_some() {
        return Ok(());
    }
    let id = Some(client_call_id.clone());
    match create(
        state,
        caller,
        recipient,
        call_type,
        id.clone(),
        CallStatus::Ringing,
        withheld,
    )
    .await?
    {
        Ok(call) => ring(state, &call).await,
        Err(CallRefused::CallerBusy) => Err(Error::Conflict {
            code: "busy",
            message: "you are already in a call",
        }),
        Err(CallRefused::RecipientBusy) => {
            // Kept in both histories, and the caller hears "busy" at once.
            let busy = CallStatus::Busy;
            let call = create(state, caller, recipient, call_type, id, busy, false)
                .await?
                .map_err(|_| anyhow::anyhow!("a finished call cannot be refused"))?;
            tell(state, &call, caller, "busy");
            Ok(())
        }
    }
}

/// WebSocket `call_response`: moves the call on and tells the other party. Repeating an answer
/// about a finished call changes nothing.
pub async fn respond(
    state: &AppState,
    user: UserId,
    call_id: &str,
    response: CallResponse,
) -> Result<()> {
    let call = state
        .store
        .calls()
        .find_call(user, call_id)
        .await?
        .ok_or(Error::NotFound("call"))?;
    if !call.status.is_live() {
        return Ok(());
    }
    let is_recipient = user == call.recipient_id;
    let next = match (response, call.status) {
        (CallResponse::Accept, CallStatus::Ringing) if is_recipient => CallStatus::Active,
        (CallResponse::Reject, CallStatus::Ringing) if is_recipient => CallStatus::Rejected,
        (CallResponse::Busy, CallStatus::Ringing) if is_recipient => CallStatus::Busy,
        (CallResponse::End, CallStatus::Ringing) if is_recipient => CallStatus::Rejected,
        (CallResponse::End, CallStatus::Ringing) => CallStatus::Cancelled,
        (CallResponse::End, CallStatus::Active) => CallStatus::Ended,
        _ => {
            return Err(Error::Invalid {
                code: "invalid_call_state",
                message: format!(
                    "cannot {} a call that is {}",
                    response.as_str(),
                    call.status.as_str()
                ),
            });
        }
    };
    // `None`: the other party (or the timeout) moved it first; they told everyone.
    if let Some(call) = state
        .store
        .calls()
        .transition_call(call.id, call.status, next, now())
        .await?
    {
        tell(state, &call, call.other(user), response.as_str());
    }
    Ok(())
}

/// Calls still ringing after the timeout become `missed`; both parties are told it ended.
pub async fn expire_unanswered(state: &AppState) -> Result<()> {
    let at = now();
    for call in state
        .store
        .calls()
        .expire_ringing_calls(at - ring_timeout(state)?, at)
        .await?
    {
        tell(state, &call, call.caller_id, "end");
        tell(state, &call, call.recipient_id, "end");
    }
    Ok(())
}

/// Ends active calls that neither party has had a socket for in `CALL_MAX_SILENCE`: both apps
/// are gone (killed, out of coverage) and nobody will say `end`, so the call would keep both
/// "busy" forever. `silent` remembers since when each call was seen without either party,
/// from one sweep to the next. Sockets are looked for on every node of a cluster, through
/// the presence keys; while Redis cannot say, nothing is ended.
pub async fn end_abandoned(state: &AppState, silent: &mut HashMap<CallId, Instant>) -> Result<()> {
    if state.hub.broker().is_some_and(|broker| !broker.is_up()) {
        return Ok(());
    }
    let calls = state.store.calls().active_calls().await?;
    let seen: HashSet<CallId> = calls.iter().map(|call| call.id).collect();
    silent.retain(|id, _| seen.contains(id));
    for call in calls {
        if connected(state, call.caller_id).await || connected(state, call.recipient_id).await {
            silent.remove(&call.id);
            continue;
        }
        let since = *silent.entry(call.id).or_insert_with(Instant::now);
        if since.elapsed() < state.config.call_max_silence {
            continue;
        }
        silent.remove(&call.id);
        let ended = state
            .store
            .calls()
            .transition_call(call.id, CallStatus::Active, CallStatus::Ended, now())
            .await?;
        if let Some(call) = ended {
            tracing::info!(call = %call.id, "active call ended: neither party connected");
            tell(state, &call, call.caller_id, "end");
            tell(state, &call, call.recipient_id, "end");
        }
    }
    Ok(())
}

/// Whether `user` has a socket open on any node.
async fn connected(state: &AppState, user: UserId) -> bool {
    state.hub.is_local(user) || state.hub.online_elsewhere(user).await
}

fn ring_timeout(state: &AppState) -> Result<chrono::Duration> {
    chrono::Duration::from_std(state.config.call_ring_timeout)
        .map_err(|e| Error::Internal(anyhow::anyhow!("ring timeout out of range: {e}")))
}

/// How often unanswered (and abandoned) calls are looked for: a quarter of the timeout,
/// within bounds.
pub fn expiry_interval(ring_timeout: Duration) -> Duration {
    (ring_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(5))
}

/// `user`'s calls, newest first; `before` is the id of the oldest call already seen.
pub async fn history(
    state: &AppState,
    user: UserId,
    before: Option<CallId>,
    limit: Option<i64>,
) -> Result<Vec<CallRecord>> {
    let limit = super::input::page_limit(limit);
    state.store.calls().call_history(user, before, limit).await
}

pub async fn active(state: &AppState, user: UserId) -> Result<Call> {
    state
        .store
        .calls()
        .live_call(user)
        .await?
        .ok_or(Error::NotFound("active call"))
}

/// Checks that `recipient` can be called by `caller`; returns whether the call is withheld
/// (the recipient blocks the caller).
async fn check_recipient(state: &AppState, caller: UserId, recipient: UserId) -> Result<bool> {
    if recipient == caller {
        return Err(Error::invalid("you cannot call yourself"));
    }
    if !state.store.users().user_exists(recipient).await? {
        return Err(Error::NotFound("user"));
    }
    super::blocks::blocks(state, recipient, caller).await
}

async fn create(
    state: &AppState,
    caller: UserId,
    recipient: UserId,
    call_type: CallType,
    client_call_id: Option<String>,
    status: CallStatus,
    withheld: bool,
) -> Result<Result<Call, CallRefused>> {
    state
        .store
        .calls()
        .create_call(&NewCall {
            id: CallId(Uuid::now_v7()),
            client_call_id,
            caller,
            recipient,
            call_type: call_type.as_str(),
            status,
            at: now(),
            withheld,
        })
        .await
}

/// Rings every socket of the recipient (none for a withheld call).
async fn ring(state: &AppState, call: &Call) -> Result<()> {
    if call.withheld {
        return Ok(());
    }
    let caller = state.store.users().user(call.caller_id).await?;
    let event = Event::CallRequestFull {
        call_id: call.id_for(call.recipient_id).to_owned(),
        caller_id: call.caller_id,
        caller_name: caller.map(|u| crate::model::display_name(u.username, u.name)),
        recipient_id: call.recipient_id,
        call_type: call.call_type.clone(),
        timestamp: call.created_at,
    };
    super::deliver_ephemeral(
        state,
        [call.recipient_id],
        EphemeralKey::Call(call.id),
        &event,
    );
    super::push::wake(state, call.recipient_id, Devices::All, Urgency::High);
    Ok(())
}

/// Sends `to` a `call_response_full` naming the call by the id their app knows. Until the
/// call is answered this is ephemeral (the latest of ring, cancel, reject, busy or missed is
/// what counts, and a flood of them must not close anyone's socket); the answer and the end
/// of an answered call are durable. The callee of a withheld call is told nothing.
fn tell(state: &AppState, call: &Call, to: UserId, response: &'static str) {
    if call.withheld && to == call.recipient_id {
        return;
    }
    let event = Event::CallResponseFull {
        call_id: call.id_for(to).to_owned(),
        response,
        status: call.status,
        timestamp: now(),
    };
    if call.status == CallStatus::Active || call.status == CallStatus::Ended {
        // A ring still waiting on a slow socket would come after the answer.
        state
            .hub
            .withdraw_ephemeral(to, EphemeralKey::Call(call.id));
        super::deliver(state, [to], &event);
    } else {
        super::deliver_ephemeral(state, [to], EphemeralKey::Call(call.id), &event);
    }
}
