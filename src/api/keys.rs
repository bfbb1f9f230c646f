//! `/api/keys` and `/api/devices`: the key directory. Key bytes travel as base64 and are
//! decoded here, at the boundary; the rest of the server sees opaque bytes.

use axum::{extract::State, http::StatusCode};
use base64::{
    Engine as _,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig, general_purpose::STANDARD},
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::openapi::schema::{AllOfBuilder, AnyOfBuilder, Schema};

use super::{
    docs::ErrorBody,
    extract::{Json, Path, Query},
};
use crate::{
    AppState,
    auth::{AuthSession, AuthUser},
    domain::{
        devices::{self, DeviceInfo},
        keys::{self, KeyCount, KeyUpload},
    },
    error::{Error, Result},
    model::UserId,
    store::{Bundle, PreKey, SignedPreKey},
};

/// Standard alphabet; padding optional, since some encoders drop it.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

fn decode(field: &str, value: &str) -> Result<Vec<u8>> {
    LENIENT.decode(value).map_err(|_| Error::Invalid {
        code: "invalid_base64",
        message: format!("{field} is not valid base64"),
    })
}

#[derive(Deserialize, Serialize, utoipa::ToSchema)]
pub struct PreKeyBody {
    #[schema(value_type = i64, minimum = 0, maximum = 4294967295_i64)]
    key_id: u32,
    /// Base64.
    public_key: String,
}

#[derive(Deserialize, Serialize, utoipa::ToSchema)]
pub struct SignedPreKeyBody {
    #[schema(value_type = i64, minimum = 0, maximum = 4294967295_i64)]
    key_id: u32,
    /// Base64.
    public_key: String,
    /// Base64.
    signature: String,
}

impl SignedPreKeyBody {
    fn decode(self, field: &str) -> Result<SignedPreKey> {
        Ok(SignedPreKey {
            key_id: i64::from(self.key_id),
            public_key: decode(&format!("{field}.public_key"), &self.public_key)?,
            signature: decode(&format!("{field}.signature"), &self.signature)?,
        })
    }
}

impl From<&SignedPreKey> for SignedPreKeyBody {
    fn from(key: &SignedPreKey) -> Self {
        Self {
            key_id: u32::try_from(key.key_id).unwrap_or_default(),
            public_key: STANDARD.encode(&key.public_key),
            signature: STANDARD.encode(&key.signature),
        }
    }
}

#[derive(Deserialize)]
pub struct UploadBody {
    device_id: Option<i64>,
    registration_id: Option<u32>,
    identity_key: Option<String>,
    signed_prekey: Option<SignedPreKeyBody>,
    one_time_prekeys: Option<Vec<PreKeyBody>>,
    pq_last_resort_prekey: Option<SignedPreKeyBody>,
}

/// Written by hand, not derived: a full upload (`identity_key`) must carry `signed_prekey`, a
/// rule across fields that only `dependentRequired` states; and the same key shape has different
/// size limits in different fields. Keys are base64 (standard alphabet, padding optional) of
/// 1..=64 bytes (public keys), 1..=128 (signatures) and 1..=2048 (the Kyber last-resort key).
impl utoipa::PartialSchema for UploadBody {
    fn schema() -> utoipa::openapi::RefOr<Schema> {
        const KEY: &str = "^(([A-Za-z0-9+/]{4}){1,21}|([A-Za-z0-9+/]{4}){0,20}([A-Za-z0-9+/][AQgw]={0,2}|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=?)|([A-Za-z0-9+/]{4}){21}[A-Za-z0-9+/][AQgw]={0,2})$";
        const SIGNATURE: &str = "^(([A-Za-z0-9+/]{4}){1,42}|([A-Za-z0-9+/]{4}){0,42}([A-Za-z0-9+/][AQgw]={0,2}|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=?))$";
        const PQ_KEY: &str = "^(([A-Za-z0-9+/]{4}){1,682}|([A-Za-z0-9+/]{4}){0,682}([A-Za-z0-9+/][AQgw]={0,2}|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=?))$";
        let key_id = json!({"type": "integer", "minimum": 0, "maximum": u32::MAX});
        let signed = |key: &str| {
            json!({
                "type": ["object", "null"],
                "required": ["key_id", "public_key", "signature"],
                "properties": {
                    "key_id": key_id.clone(),
                    "public_key": {"type": "string", "pattern": key},
                    "signature": {"type": "string", "pattern": SIGNATURE},
                },
            })
        };
        let schema = json!({
            "type": "object",
            "properties": {
                "device_id": {"type": ["integer", "null"], "minimum": 1, "maximum": keys::MAX_DEVICE_ID, "description": "default: the session's device, or 1"},
                "registration_id": {"type": ["integer", "null"], "minimum": 0, "maximum": u32::MAX},
                "identity_key": {"type": ["string", "null"], "pattern": KEY, "description": "with it, a full upload that replaces every key of the device"},
                "signed_prekey": signed(KEY),
                "one_time_prekeys": {
                    "type": ["array", "null"],
                    "maxItems": keys::MAX_PREKEYS_PER_UPLOAD,
                    "description": "key ids unique within the upload",
                    "items": {
                        "type": "object",
                        "required": ["key_id", "public_key"],
                        "properties": {"key_id": key_id.clone(), "public_key": {"type": "string", "pattern": KEY}},
                    },
                },
                "pq_last_resort_prekey": signed(PQ_KEY),
            },
        });
        // `identity_key` null or absent, or `signed_prekey` given (utoipa's object model has no
        // `dependentRequired`: the rule wraps the object).
        let refresh = json!({"type": "object", "properties": {"identity_key": {"type": "null"}}});
        let full = json!({
            "type": "object",
            "required": ["signed_prekey"],
            "properties": {"signed_prekey": {"type": "object"}},
        });
        let parse = |value| {
            serde_json::from_value::<Schema>(value).expect("the key upload schema is valid")
        };
        AllOfBuilder::new()
            .item(parse(schema))
            .item(AnyOfBuilder::new().item(parse(refresh)).item(parse(full)))
            .into()
    }
}

impl utoipa::ToSchema for UploadBody {}

impl UploadBody {
    /// `bound`: the device the caller's session is signed in as, if any.
    fn decode(self, bound: Option<i64>) -> Result<KeyUpload> {
        let one_time_prekeys = self.one_time_prekeys.unwrap_or_default();
        if one_time_prekeys.len() > keys::MAX_PREKEYS_PER_UPLOAD {
            // Refused before decoding anything.
            return Err(Error::invalid(format!(
                "at most {} one-time prekeys per upload",
                keys::MAX_PREKEYS_PER_UPLOAD
            )));
        }
        Ok(KeyUpload {
            device_id: keys::own_device(bound, self.device_id)?,
            registration_id: self.registration_id.map(i64::from),
            identity_key: self
                .identity_key
                .map(|k| decode("identity_key", &k))
                .transpose()?,
            signed_prekey: self
                .signed_prekey
                .map(|k| k.decode("signed_prekey"))
                .transpose()?,
            pq_prekey: self
                .pq_last_resort_prekey
                .map(|k| k.decode("pq_last_resort_prekey"))
                .transpose()?,
            one_time_prekeys: one_time_prekeys
                .into_iter()
                .map(|k| {
                    Ok(PreKey {
                        key_id: i64::from(k.key_id),
                        public_key: decode("one_time_prekeys.public_key", &k.public_key)?,
                    })
                })
                .collect::<Result<_>>()?,
        })
    }
}

/// `PUT /api/keys`: publish (with `identity_key`: replace) the caller's device keys.
#[utoipa::path(
    put,
    path = "/keys",
    tag = "keys",
    summary = "Publish the caller's device keys",
    request_body = UploadBody,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the one-time prekeys the device now has", body = KeyCount),
        (status = 400, description = "invalid input", body = ErrorBody),
        (status = 401, description = "missing or bad token (empty body)"),
        (status = 403, description = "a device_id other than the one the session is signed in as (`wrong_device`)", body = ErrorBody),
        (status = 404, description = "refresh of an unknown device", body = ErrorBody),
        (status = 409, description = "prekey id already stored", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 429, description = "too many writes (Retry-After)", body = ErrorBody),
    )
)]
pub async fn upload(
    State(state): State<AppState>,
    AuthSession(claims): AuthSession,
    Json(body): Json<UploadBody>,
) -> Result<axum::Json<KeyCount>> {
    let upload = body.decode(claims.device)?;
    Ok(axum::Json(
        keys::upload(&state, claims.user_id, upload).await?,
    ))
}

#[derive(Deserialize)]
pub struct DeviceQuery {
    device_id: Option<i64>,
}

/// `GET /api/keys/count?device_id=`: one-time prekeys the caller's device has left.
#[utoipa::path(
    get,
    path = "/keys/count",
    tag = "keys",
    summary = "One-time prekeys left on the caller's device",
    params(("device_id" = Option<i64>, Query, minimum = 1, maximum = 127, description = "default: the session's device, or 1")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the one-time prekeys left", body = KeyCount),
        (status = 400, description = "a device_id out of 1..=127", body = ErrorBody),
        (status = 401, description = "missing or bad token (empty body)"),
        (status = 403, description = "a device_id other than the one the session is signed in as (`wrong_device`)", body = ErrorBody),
    )
)]
pub async fn count(
    State(state): State<AppState>,
    AuthSession(claims): AuthSession,
    Query(query): Query<DeviceQuery>,
) -> Result<axum::Json<KeyCount>> {
    let device = keys::own_device(claims.device, query.device_id)?;
    Ok(axum::Json(
        keys::count(&state, claims.user_id, device).await?,
    ))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct BundleBody {
    device_id: i64,
    registration_id: Option<i64>,
    identity_key: String,
    signed_prekey: SignedPreKeyBody,
    /// Null when the device has none left.
    one_time_prekey: Option<PreKeyBody>,
    pq_last_resort_prekey: Option<SignedPreKeyBody>,
}

impl From<&Bundle> for BundleBody {
    fn from(b: &Bundle) -> Self {
        Self {
            device_id: b.device_id,
            registration_id: b.registration_id,
            identity_key: STANDARD.encode(&b.identity_key),
            signed_prekey: (&b.signed_prekey).into(),
            one_time_prekey: b.one_time_prekey.as_ref().map(|k| PreKeyBody {
                key_id: u32::try_from(k.key_id).unwrap_or_default(),
                public_key: STANDARD.encode(&k.public_key),
            }),
            pq_last_resort_prekey: b.pq_prekey.as_ref().map(Into::into),
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct BundlesBody {
    user_id: UserId,
    devices: Vec<BundleBody>,
}

fn bundles_body(user_id: UserId, bundles: &[Bundle]) -> axum::Json<BundlesBody> {
    axum::Json(BundlesBody {
        user_id,
        devices: bundles.iter().map(Into::into).collect(),
    })
}

/// `GET /api/keys/{user_id}`: a bundle per device, each taking one one-time prekey.
#[utoipa::path(
    get,
    path = "/keys/{user_id}",
    tag = "keys",
    summary = "A prekey bundle per device of a user (takes one one-time prekey each)",
    params(("user_id" = Uuid, Path, description = "user id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "a bundle per device", body = BundlesBody),
        (status = 401, description = "missing or bad token (empty body)"),
        (status = 404, description = "no such user, or no published keys", body = ErrorBody),
        (status = 429, description = "too many fetches (Retry-After)", body = ErrorBody),
    )
)]
pub async fn fetch_user(
    State(state): State<AppState>,
    AuthUser(caller): AuthUser,
    Path(target): Path<UserId>,
) -> Result<axum::Json<BundlesBody>> {
    let bundles = keys::fetch(&state, caller, target, None).await?;
    Ok(bundles_body(target, &bundles))
}

/// `GET /api/keys/{user_id}/{device_id}`: the same for one device.
#[utoipa::path(
    get,
    path = "/keys/{user_id}/{device_id}",
    tag = "keys",
    summary = "The prekey bundle of one device",
    params(("user_id" = Uuid, Path, description = "user id"), ("device_id" = i64, Path, description = "1..=127")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the device's bundle", body = BundlesBody),
        (status = 401, description = "missing or bad token (empty body)"),
        (status = 404, description = "no such user or device, or no published keys", body = ErrorBody),
        (status = 429, description = "too many fetches (Retry-After)", body = ErrorBody),
    )
)]
pub async fn fetch_device(
    State(state): State<AppState>,
    AuthUser(caller): AuthUser,
    Path((target, device)): Path<(UserId, i64)>,
) -> Result<axum::Json<BundlesBody>> {
    let bundles = keys::fetch(&state, caller, target, Some(device)).await?;
    Ok(bundles_body(target, &bundles))
}

/// `GET /api/devices`: the caller's registered devices.
#[utoipa::path(
    get,
    path = "/devices",
    tag = "keys",
    summary = "The caller's devices (registered by a key upload or a login as the device)",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "devices, by id", body = Vec<DeviceInfo>),
        (status = 401, description = "missing or bad token (empty body)"),
    )
)]
pub async fn devices(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> Result<axum::Json<Vec<DeviceInfo>>> {
    Ok(axum::Json(devices::list(&state, user).await?))
}

/// `DELETE /api/devices/{device_id}`: unlink a device: its keys, queue and bound sessions go,
/// its sockets close (4001) on every node.
#[utoipa::path(
    delete,
    path = "/devices/{device_id}",
    tag = "keys",
    summary = "Unlink one of the caller's devices (keys, envelope queue, bound sessions; its sockets close with 4001)",
    params(("device_id" = i64, Path, description = "2..=127 (1, the primary, cannot be unlinked)")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "unlinked"),
        (status = 401, description = "missing or bad token (empty body)"),
        (status = 403, description = "the primary device (`primary_device`), or another device than the caller's own linked device (`wrong_device`)", body = ErrorBody),
        (status = 404, description = "no such device of the caller", body = ErrorBody),
        (status = 429, description = "too many writes (Retry-After)", body = ErrorBody),
    )
)]
pub async fn delete_device(
    State(state): State<AppState>,
    AuthSession(claims): AuthSession,
    Path(device): Path<i64>,
) -> Result<StatusCode> {
    devices::unlink(&state, &claims, device).await?;
    Ok(StatusCode::NO_CONTENT)
}
