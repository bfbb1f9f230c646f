//! Sessions: a short-lived access token (a JWT naming its session) plus a refresh token that is
//! rotated on every use. Presenting an already-used refresh token revokes the whole session
//! (someone copied it). Logout revokes this session or all of them; a password change revokes
//! all of them. Revoked sessions' access tokens are refused and their sockets closed.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{
    AppState,
    auth::TokenClaims,
    error::{Error, Result},
    hub::CloseReason,
    model::{SessionId, User, UserId, now},
    store::Rotation,
};

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

/// Starts a new session for `user`.
pub async fn start(state: &AppState, user: UserId) -> Result<Tokens> {
    let session = SessionId(Uuid::now_v7());
    let refresh_token = new_refresh_token();
    let at = now();
    state
        .store
        .create_session(
            session,
            user,
            &hash_refresh_token(&refresh_token),
            at,
            refresh_expiry(state, at),
        )
        .await?;
    tokens(state, user, session, refresh_token)
}

/// Exchanges a refresh token for new tokens; the presented token cannot be used again.
pub async fn refresh(state: &AppState, refresh_token: &str) -> Result<(Tokens, User)> {
    let next = new_refresh_token();
    let at = now();
    let rotation = state
        .store
        .rotate_refresh_token(
            &hash_refresh_token(refresh_token),
            &hash_refresh_token(&next),
            at,
            refresh_expiry(state, at),
        )
        .await?;
    match rotation {
        Rotation::Rotated { session, user } => {
            let profile = state.store.user(user).await?.ok_or(Error::Unauthorized)?;
            Ok((tokens(state, user, session, next)?, profile))
        }
        Rotation::Reused { session, user } => {
            tracing::warn!(%user, %session, "a used refresh credential came back: session revoked");
            state.hub.close_session(session, CloseReason::Revoked);
            Err(Error::Unauthorized)
        }
        Rotation::Invalid => Err(Error::Unauthorized),
    }
}

/// Signs out the session of `claims` (this device).
pub async fn logout(state: &AppState, claims: TokenClaims) -> Result<()> {
    state
        .store
        .revoke_session(claims.session_id, claims.user_id, now())
        .await?;
    state
        .hub
        .close_session(claims.session_id, CloseReason::Revoked);
    Ok(())
}

/// Signs out every session of `user`.
pub async fn logout_everywhere(state: &AppState, user: UserId) -> Result<()> {
    state.store.revoke_sessions(user, now()).await?;
    state.hub.close_user(user, CloseReason::Revoked);
    Ok(())
}

fn tokens(
    state: &AppState,
    user: UserId,
    session: SessionId,
    refresh_token: String,
) -> Result<Tokens> {
    Ok(Tokens {
        token: state.tokens.issue(user, session)?,
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
