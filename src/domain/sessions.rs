//! Sessions: a short-lived access token (a JWT naming its session) plus a refresh token that is
//! rotated on every use. Presenting an already-used refresh token revokes the whole session
//! (someone copied it), unless it is a retry within a short grace (see `refresh`). Logout revokes this session or all of them; a password change revokes
//! all of them. Revoked sessions' access tokens are refused and their sockets closed.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{
    AppState,
    auth::TokenClaims,
    error::{Error, Result},
    events::CloseReason,
    model::{SessionId, User, UserId, now},
    store::Rotation,
};

/// Whether `session` belongs to `user` (who still exists) and is not revoked.
pub async fn is_active(state: &AppState, session: SessionId, user: UserId) -> Result<bool> {
    state.store.security().session_active(session, user).await
}

/// Tokens of a session: what register, login and refresh answer.
#[derive(Debug)]
pub struct Tokens {
    /// The access token (JWT).
    pub token: String,
    pub refresh_token: String,
    /// Seconds until `token` expires.
    pub expires_in: u64,
    pub session_id: SessionId,
}

/// Starts a new session for `user`, bound to `device` when given (its tokens carry it).
pub async fn start(state: &AppState, user: UserId, device: Option<i64>) -> Result<Tokens> {
    let session = SessionId(Uuid::now_v7());
    let refresh_token = new_refresh_token();
    let at = now();
    state
        .store
        .security()
        .create_session(
            session,
            user,
            device,
            &hash_refresh_token(&refresh_token),
            at,
            refresh_expiry(state, at),
        )
        .await?;
    tokens(state, user, session, device, refresh_token)
}

/// Exchanges a refresh token for new tokens; the presented token cannot be used again, except
/// by a retry within `REFRESH_REUSE_GRACE`, which gets the very same tokens.
///
/// The same tokens without keeping them: the successor of a refresh token is an HMAC of it
/// under a server key, and the access token is signed over the same claims (issued at the
/// rotation, its id derived like the successor). Only whoever holds the used token can ask,
/// nothing secret is stored, and every node of a cluster answers alike. A thief without the
/// server key cannot compute a successor from a stolen token.
pub async fn refresh(state: &AppState, refresh_token: &str) -> Result<(Tokens, User)> {
    // Before the rotation, which would answer a suspended user's token (its session revoked)
    // as unknown: the app must learn why it cannot sign in again.
    let security = state.store.security();
    if (security.refresh_token_suspended(&hash_refresh_token(refresh_token))).await? {
        return Err(suspended());
    }
    let next = derive(state, SUCCESSOR, refresh_token)?;
    let next = URL_SAFE_NO_PAD.encode(next);
    let at = now();
    let grace = chrono::Duration::from_std(state.config.refresh_reuse_grace)
        .ok()
        .filter(|grace| !grace.is_zero())
        .map(|grace| at - grace);
    let rotation = state
        .store
        .security()
        .rotate_refresh_token(
            &hash_refresh_token(refresh_token),
            &hash_refresh_token(&next),
            at,
            refresh_expiry(state, at),
            grace,
        )
        .await?;
    // The device comes from the session row, so a refreshed token stays bound to it.
    let (session, user, device, issued_at) = match rotation {
        Rotation::Rotated {
            session,
            user,
            device,
        } => (session, user, device, at),
        Rotation::Repeated {
            session,
            user,
            device,
            rotated_at,
        } => {
            tracing::info!(%user, %session, "refresh repeated within the grace: same tokens");
            (session, user, device, rotated_at)
        }
        Rotation::Reused { session, user } => {
            tracing::warn!(%user, %session, "a used refresh credential came back: session revoked");
            state.hub.close_session(session, CloseReason::Revoked);
            return Err(Error::Unauthorized);
        }
        Rotation::Invalid => return Err(Error::Unauthorized),
    };
    let profile = state
        .store
        .users()
        .user(user)
        .await?
        .ok_or(Error::Unauthorized)?;
    let jti = uuid::Builder::from_random_bytes(
        derive(state, ACCESS_ID, refresh_token)?[..16]
            .try_into()
            .map_err(|_| anyhow::anyhow!("an HMAC-SHA-256 is 32 bytes"))?,
    )
    .into_uuid();
    let tokens = Tokens {
        token: state
            .tokens
            .issue_as(user, session, device, issued_at.timestamp(), jti)?,
        refresh_token: next,
        expires_in: state.tokens.lifetime().as_secs(),
        session_id: session,
    };
    Ok((tokens, profile))
}

/// Labels of what is derived from a refresh token (each its own HMAC domain).
const SUCCESSOR: &[u8] = b"kisse refresh successor\0";
const ACCESS_ID: &[u8] = b"kisse refreshed access token id\0";

/// HMAC-SHA-256 of `label || refresh_token` under the JWT secret.
fn derive(state: &AppState, label: &[u8], refresh_token: &str) -> Result<[u8; 32]> {
    let mut mac = Hmac::<Sha256>::new_from_slice(state.config.jwt_secret.expose())
        .map_err(|e| anyhow::anyhow!("HMAC key: {e}"))?;
    mac.update(label);
    mac.update(refresh_token.as_bytes());
    Ok(mac.finalize().into_bytes().into())
}

/// The answer to a suspended user's login or refresh (see `domain::admin`).
pub fn suspended() -> Error {
    Error::Refused {
        code: "suspended",
        message: "this account is suspended",
    }
}

/// Signs out the session of `claims` (this device).
pub async fn logout(state: &AppState, claims: TokenClaims) -> Result<()> {
    state
        .store
        .security()
        .revoke_session(claims.session_id, claims.user_id, now())
        .await?;
    state
        .hub
        .close_session(claims.session_id, CloseReason::Revoked);
    Ok(())
}

/// Signs out every session of `user`; how many were active.
pub async fn logout_everywhere(state: &AppState, user: UserId) -> Result<u64> {
    let revoked = state.store.security().revoke_sessions(user, now()).await?;
    state.hub.close_user(user, CloseReason::Revoked);
    Ok(revoked)
}

fn tokens(
    state: &AppState,
    user: UserId,
    session: SessionId,
    device: Option<i64>,
    refresh_token: String,
) -> Result<Tokens> {
    Ok(Tokens {
        token: state.tokens.issue(user, session, device)?,
        refresh_token,
        expires_in: state.tokens.lifetime().as_secs(),
        session_id: session,
    })
}

/// When a refresh token issued `at` expires (an absurdly long TTL is capped at ten years).
fn refresh_expiry(state: &AppState, at: DateTime<Utc>) -> DateTime<Utc> {
    const TEN_YEARS: chrono::Duration = chrono::Duration::days(3653);
    let ttl = chrono::Duration::from_std(state.config.refresh_token_ttl)
        .unwrap_or(TEN_YEARS)
        .min(TEN_YEARS);
    at + ttl
}

/// 256 random bits, URL-safe base64.
fn new_refresh_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// What the database keeps instead of the token: its SHA-256, in hex. The token has 256 bits
/// of entropy, so a fast hash is enough (nothing to brute-force).
fn hash_refresh_token(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_tokens_are_random_and_only_their_hash_is_kept() {
        let (a, b) = (new_refresh_token(), new_refresh_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        let hash = hash_refresh_token(&a);
        assert_eq!(hash.len(), 64);
        assert!(!hash.contains(&a));
        assert_eq!(hash, hash_refresh_token(&a));
    }
}
