//! Who is calling: password hashing, tokens, and the `AuthUser` extractor.

mod password;
mod token;

use axum::{extract::FromRequestParts, http::request::Parts};

pub use password::{Check, PasswordHasher};
pub use token::{TokenClaims, TokenKeys};

use crate::{AppState, error::Error, model::UserId};

/// The bearer token of a request's `Authorization` header, if any.
pub fn bearer_token(parts: &Parts) -> Option<&str> {
    let value = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Whether the request's bearer token is `expected` (an operator's token from the settings).
/// The SHA-256 digests are compared in constant time: neither where the bytes differ nor the
/// token's length shows in the time taken.
pub fn bearer_is(parts: &Parts, expected: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    bearer_token(parts).is_some_and(|given| {
        let given: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        let expected: [u8; 32] = Sha256::digest(expected).into();
        bool::from(given.ct_eq(&expected))
    })
}

/// Checks a token and that its session is still active (a revoked session's tokens, and a
/// deleted account's, die with it).
pub async fn authenticate(state: &AppState, token: &str) -> Result<TokenClaims, Error> {
    let claims = state.tokens.verify(token).ok_or(Error::Unauthorized)?;
    if !state
        .store
        .security()
        .session_active(claims.session_id, claims.user_id)
        .await?
    {
        return Err(Error::Unauthorized);
    }
    Ok(claims)
}

/// Claims already authenticated for this request (by the per-user limits, which run before
/// the handler): the extractors below use them instead of asking the store again.
#[derive(Clone, Copy, Debug)]
pub struct Authenticated(pub TokenClaims);

async fn claims(parts: &Parts, state: &AppState) -> Result<TokenClaims, Error> {
    if let Some(Authenticated(claims)) = parts.extensions.get::<Authenticated>() {
        return Ok(*claims);
    }
    let token = bearer_token(parts).ok_or(Error::Unauthorized)?;
    authenticate(state, token).await
}

/// An authenticated caller with the session of their token; rejects with an empty 401.
#[derive(Clone, Copy, Debug)]
pub struct AuthSession(pub TokenClaims);

impl FromRequestParts<AppState> for AuthSession {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        Ok(Self(claims(parts, state).await?))
    }
}

/// An authenticated caller; rejects with an empty 401 otherwise.
#[derive(Clone, Copy, Debug)]
pub struct AuthUser(pub UserId);

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        Ok(Self(claims(parts, state).await?.user_id))
    }
}
