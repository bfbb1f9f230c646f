//! Registration, login, password change and account deletion.

use std::net::IpAddr;

use serde::Deserialize;
use uuid::Uuid;

use super::{
    devices,
    sessions::{self, Tokens},
};
use crate::{
    AppState,
    auth::Check,
    error::{Error, Result},
    events::CloseReason,
    model::{User, UserId, now},
    store::NewUser,
};

const MAX_EMAIL_LEN: usize = 254;
const MIN_PASSWORD_LEN: usize = 8;
/// Bounds the work a single request can ask of the hasher.
const MAX_PASSWORD_LEN: usize = 1024;
const MAX_NAME_LEN: usize = 100;

/// The schema states the rules `register` checks (surrounding whitespace is trimmed), so a
/// request the document calls valid is one the server accepts.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct Registration {
    #[schema(
        max_length = 254,
        pattern = "^\\s*[^\\s@\\x00-\\x1f\\x7f-\\x9f]+@[^\\s@.\\x00-\\x1f\\x7f-\\x9f]([^\\s@\\x00-\\x1f\\x7f-\\x9f]*[^\\s@.\\x00-\\x1f\\x7f-\\x9f])?\\s*$",
        example = "ada@example.com"
    )]
    pub email: String,
    /// The app's own rule: `^[A-Za-z0-9_]{3,50}$`.
    #[schema(pattern = "^\\s*[A-Za-z0-9_]{3,50}\\s*$", example = "ada")]
    pub username: String,
    /// 8 characters to 1024 bytes.
    #[schema(min_length = 8, max_length = 1024, example = "correct horse")]
    pub password: String,
    /// Shown instead of the username; blank means none.
    #[schema(max_length = 100, example = "Ada")]
    pub name: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct Credentials {
    #[schema(example = "ada@example.com")]
    pub email: String,
    #[schema(example = "correct horse")]
    pub password: String,
    /// Signs in as this device (1..=127): the session is bound to it (its sockets are that
    /// device) and the device is registered. Without it, an unbound session (device 1).
    #[schema(minimum = 1, maximum = 127)]
    pub device_id: Option<i64>,
    /// The device's name, shown in the list of devices (trimmed, at most 64 characters); only
    /// with `device_id`.
    #[schema(max_length = 64, example = "Ada's laptop")]
    pub device_name: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct PasswordChange {
    pub current_password: String,
    /// 8 characters to 1024 bytes.
    #[schema(min_length = 8, max_length = 1024)]
    pub new_password: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct Deletion {
    pub password: String,
}

/// A signed-in user and the tokens of their new session.
pub struct Session {
    pub tokens: Tokens,
    pub user: User,
}

pub async fn register(state: &AppState, form: Registration) -> Result<Session> {
    let email = normalize_email(&form.email).ok_or_else(|| Error::invalid("email is not valid"))?;
    let username = form.username.trim();
    if !valid_username(username) {
        return Err(Error::invalid(
            "username must be 3 to 50 letters, digits or underscores",
        ));
    }
    check_password(&form.password)?;
    let name = form
        .name
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty());
    if name
        .as_ref()
        .is_some_and(|n| n.chars().count() > MAX_NAME_LEN)
    {
        return Err(Error::invalid(format!(
            "name must be at most {MAX_NAME_LEN} characters"
        )));
    }
    let password_hash = state.hasher.hash(form.password).await?;
    let user = state
        .store
        .users()
        .create_user(&NewUser {
            id: UserId(Uuid::now_v7()),
            email,
            username: username.to_owned(),
            name,
            password_hash,
            created_at: now(),
        })
        .await?;
    let tokens = sessions::start(state, user.id, None).await?;
    Ok(Session { tokens, user })
}

/// Unknown email and wrong password get the same answer after the same amount of hashing.
/// A legacy (bcrypt) hash that matches is replaced by an Argon2id hash.
///
/// Only failures count: per (account, client address), so that someone guessing from one
/// address meets a 429 while the owner, elsewhere, still gets in; and per account, a much
/// higher ceiling against guesses spread over many addresses. A success resets its pair.
pub async fn login(state: &AppState, form: Credentials, client: Option<IpAddr>) -> Result<Session> {
    // Checked before the password: a malformed request costs no hashing and no attempt.
    let device = devices::login_device(form.device_id, form.device_name)?;
    let email = normalize_email(&form.email);
    let account = email.clone().unwrap_or_default();
    let pair = (account.clone(), client);
    // Taken up front (concurrent guesses cannot all slip through), given back unless it failed.
    state.login_failures.take(pair.clone())?;
    if let Err(e) = state.auth_by_account.take(account.clone()) {
        state.login_failures.refund(&pair);
        return Err(e);
    }
    let outcome = check_credentials(state, email, form.password).await;
    match &outcome {
        Ok(_) => {
            state.login_failures.forget(&pair);
            state.auth_by_account.refund(&account);
        }
        Err(Error::Unauthorized) => {}
        Err(_) => {
            state.login_failures.refund(&pair);
            state.auth_by_account.refund(&account);
        }
    }
    let user = outcome?;
    // After the password: only the owner learns that the account is suspended.
    if state.store.users().is_suspended(user.id).await? {
        return Err(sessions::suspended());
    }
    if let Some((device, name)) = &device {
        devices::register(state, user.id, *device, name.as_deref()).await?;
    }
    let tokens = sessions::start(state, user.id, device.map(|(device, _)| device)).await?;
    Ok(Session { tokens, user })
}

/// The user whose email and password these are; `Unauthorized` otherwise.
async fn check_credentials(
    state: &AppState,
    email: Option<String>,
    password: String,
) -> Result<User> {
    let found = match email {
        Some(email) => state.store.users().credentials_by_email(&email).await?,
        None => None,
    };
    let password = if password.len() > MAX_PASSWORD_LEN {
        String::new()
    } else {
        password
    };
    let (user, hash) = found.map_or((None, None), |(user, hash)| (Some(user), Some(hash)));
    let check = state.hasher.check(password.clone(), hash.clone()).await?;
    let user = match user {
        Some(user) if check != Check::Mismatch => user,
        _ => return Err(Error::Unauthorized),
    };
    if let (Check::MatchesOutdated, Some(previous)) = (check, hash) {
        let upgraded = state.hasher.hash(password).await?;
        state
            .store
            .security()
            .upgrade_password_hash(user.id, &previous, &upgraded)
            .await?;
        tracing::info!(user = %user.id, "stored hash upgraded to Argon2id");
    }
    Ok(user)
}

/// Checks the caller's current password (failures limited per account like logins).
async fn reauthenticate(state: &AppState, user: UserId, password: String) -> Result<()> {
    let account = user.to_string();
    state.auth_by_account.take(account.clone())?;
    let password = if password.len() > MAX_PASSWORD_LEN {
        String::new()
    } else {
        password
    };
    let hash = state.store.security().password_hash(user).await?;
    if state.hasher.check(password, hash).await? == Check::Mismatch {
        return Err(Error::Forbidden("the current password is wrong"));
    }
    state.auth_by_account.refund(&account);
    Ok(())
}

/// Changes the password: every session of the user is revoked (their sockets closed), and a
/// new session is started for the caller, bound to the caller's `device` if theirs was.
pub async fn change_password(
    state: &AppState,
    user: UserId,
    device: Option<i64>,
    form: PasswordChange,
) -> Result<Session> {
    check_password(&form.new_password)?;
    reauthenticate(state, user, form.current_password).await?;
    let hash = state.hasher.hash(form.new_password).await?;
    if !state
        .store
        .security()
        .change_password(user, &hash, now())
        .await?
    {
        return Err(Error::Unauthorized);
    }
    state.hub.close_user(user, CloseReason::Revoked);
    let profile = state
        .store
        .users()
        .user(user)
        .await?
        .ok_or(Error::Unauthorized)?;
    let tokens = sessions::start(state, user, device).await?;
    Ok(Session {
        tokens,
        user: profile,
    })
}

/// The owner deletes their account (see `remove`), after giving their password.
pub async fn delete(state: &AppState, user: UserId, form: Deletion) -> Result<()> {
    reauthenticate(state, user, form.password).await?;
    remove(state, user).await?;
    Ok(())
}

/// Deletes the account and every row that names it; its sockets are closed and its cached
/// conversations forgotten, on every node (a message to it is then refused as not found).
/// Whether there was such an account.
///
/// Its attachments' rows go with it (a cascade); their bytes are removed here, right after.
pub async fn remove(state: &AppState, user: UserId) -> Result<bool> {
    let attachments = state.store.attachments().leftovers_of(user).await?;
    if !state.store.security().delete_user(user).await? {
        return Ok(false);
    }
    super::attachments::remove_bytes(state, attachments).await;
    state.store.conversations().forget_conversations_of(user);
    state.hub.account_deleted(user);
    tracing::info!(%user, "account deleted");
    Ok(true)
}

/// Trimmed, lower-cased, and shaped like `local@domain`; `None` otherwise.
fn normalize_email(raw: &str) -> Option<String> {
    let email = raw.trim().to_lowercase();
    let (local, domain) = email.split_once('@')?;
    let well_formed = !local.is_empty()
        && !domain.is_empty()
        && !domain.contains('@')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && email.len() <= MAX_EMAIL_LEN
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    well_formed.then_some(email)
}

/// The app's own rule: `^[A-Za-z0-9_]{3,50}$`.
fn valid_username(username: &str) -> bool {
    (3..=50).contains(&username.len())
        && username
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn check_password(password: &str) -> Result<()> {
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(Error::invalid(format!(
            "password must be at least {MIN_PASSWORD_LEN} characters"
        )));
    }
    if password.len() > MAX_PASSWORD_LEN {
        return Err(Error::invalid(format!(
            "password must be at most {MAX_PASSWORD_LEN} bytes"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalized_and_checked() {
        assert_eq!(
            normalize_email("  Alice@Example.COM ").as_deref(),
            Some("alice@example.com")
        );
        for bad in [
            "",
            "alice",
            "@example.com",
            "alice@",
            "a@b@c",
            "a b@c.d",
            "a@.com",
        ] {
            assert_eq!(normalize_email(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn usernames_follow_the_app_rule() {
        assert!(valid_username("alice_01"));
        for bad in ["al", "alice!", "élise", &"a".repeat(51)] {
            assert!(!valid_username(bad), "{bad:?}");
        }
    }
}
