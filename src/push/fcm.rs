//! FCM HTTP v1: a data-only message to a registration token, authorized by an OAuth2 access
//! token obtained with the operator's service-account key (the JWT-bearer grant, RFC 7523).
//! The message carries the wake marker only: no notification, no content, no sender.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, anyhow};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::{Outcome, Urgency, retry_after};

/// The only scope FCM sends need.
const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Google accepts assertions valid for at most an hour.
const ASSERTION_LIFETIME: Duration = Duration::from_secs(3600);
/// An access token is renewed this long before Google says it expires, so that a send never
/// goes out with one about to lapse.
const RENEW_MARGIN: Duration = Duration::from_secs(5 * 60);
/// How long FCM keeps an undelivered wake-up (its maximum, 28 days, as for Web Push).
const TTL: &str = "2419200s";
/// A newer wake-up replaces one FCM still holds for the device.
const COLLAPSE_KEY: &str = "kisse-wake";

pub struct Fcm {
    client_email: String,
    /// Sent as the assertion's `kid` when the key file names its key.
    private_key_id: Option<String>,
    signing: EncodingKey,
    token_uri: String,
    send_url: String,
    /// The current access token. Held across a renewal, so concurrent sends wait for the one
    /// request instead of each making their own.
    access: Mutex<Option<AccessToken>>,
}

struct AccessToken {
    value: String,
    renew_at: Instant,
}

/// The assertion's claims (Google's "service account JWT").
#[derive(Serialize)]
struct Assertion<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: i64,
    exp: i64,
}

/// The token endpoint's answer (other fields ignored).
#[derive(Deserialize)]
struct Granted {
    access_token: String,
    #[serde(default = "an_hour")]
    expires_in: u64,
}

fn an_hour() -> u64 {
    3600
}

impl Fcm {
    /// Reads the service-account JSON key at `path`; requests go to `base_url`. Errors name
    /// the file and the field at fault, never the key.
    pub fn from_file(path: impl AsRef<Path>, base_url: &str) -> anyhow::Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading FCM_SERVICE_ACCOUNT_FILE {}", path.display()))?;
        Self::from_json(&text, base_url)
            .with_context(|| format!("FCM_SERVICE_ACCOUNT_FILE {}", path.display()))
    }

    fn from_json(text: &str, base_url: &str) -> anyhow::Result<Self> {
        // Read as a `Value` and not a typed struct: serde's type errors quote the value found,
        // which could be the key.
        let account: Value = serde_json::from_str(text)
            .map_err(|e| anyhow!("not JSON (line {}, column {})", e.line(), e.column()))?;
        let field = |name: &str| -> anyhow::Result<String> {
            match account.get(name).and_then(Value::as_str).map(str::trim) {
                Some(value) if !value.is_empty() => Ok(value.to_owned()),
                _ => Err(anyhow!("no \"{name}\" (a service-account key has one)")),
            }
        };
        let project_id = field("project_id")?;
        let client_email = field("client_email")?;
        let signing = rsa_signing_key(&field("private_key")?)?;
        let private_key_id = field("private_key_id").ok();
        let token_uri = field("token_uri").unwrap_or_else(|_| DEFAULT_TOKEN_URI.to_owned());
        reqwest::Url::parse(&token_uri).context("token_uri is not a URL")?;
        let send_url = format!(
            "{}/v1/projects/{project_id}/messages:send",
            base_url.trim_end_matches('/')
        );
        reqwest::Url::parse(&send_url).context("FCM_BASE_URL or project_id make no URL")?;
        Ok(Self {
            client_email,
            private_key_id,
            signing,
            token_uri,
            send_url,
            access: Mutex::new(None),
        })
    }

    pub async fn send(&self, http: &reqwest::Client, token: &str, urgency: Urgency) -> Outcome {
        let access = match self.access_token(http).await {
            Ok(access) => access,
            Err(outcome) => return outcome,
        };
        let request = http
            .post(&self.send_url)
            .bearer_auth(&access)
            .json(&message(token, urgency));
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => return Outcome::from_error(e),
        };
        let status = response.status();
        match status.as_u16() {
            401 => {
                // Revoked or expired early: the next attempt gets a new one.
                self.forget(&access).await;
                Outcome::Retry { after: None }
            }
            400 => {
                let body = response.bytes().await.unwrap_or_default();
                if token_refused(&body) {
                    Outcome::Gone
                } else {
                    Outcome::Failed("FCM answered 400".into())
                }
            }
            _ => Outcome::from_status(status, retry_after(response.headers())),
        }
    }

    /// The cached access token, or a new one. An error is the send's outcome.
    async fn access_token(&self, http: &reqwest::Client) -> Result<String, Outcome> {
        let mut cached = self.access.lock().await;
        if let Some(access) = cached.as_ref().filter(|a| Instant::now() < a.renew_at) {
            return Ok(access.value.clone());
        }
        let granted = self.request_access_token(http).await?;
        let lifetime = Duration::from_secs(granted.expires_in);
        let renew_in = if lifetime > 2 * RENEW_MARGIN {
            lifetime - RENEW_MARGIN
        } else {
            lifetime / 2
        };
        *cached = Some(AccessToken {
            value: granted.access_token.clone(),
            renew_at: Instant::now() + renew_in,
        });
        Ok(granted.access_token)
    }

    async fn request_access_token(&self, http: &reqwest::Client) -> Result<Granted, Outcome> {
        let assertion = self
            .assertion()
            .map_err(|e| Outcome::Failed(format!("{e:#}")))?;
        let response = http
            .post(&self.token_uri)
            .form(&[("grant_type", GRANT_TYPE), ("assertion", &assertion)])
            .send()
            .await
            .map_err(Outcome::from_error)?;
        let status = response.status();
        if !status.is_success() {
            // Not `Outcome::from_status`: a 404 here says nothing about the device's token.
            return Err(match status.as_u16() {
                429 | 500..=599 => Outcome::Retry {
                    after: retry_after(response.headers()),
                },
                other => Outcome::Failed(format!("FCM token endpoint answered {other}")),
            });
        }
        let body = response.bytes().await.map_err(Outcome::from_error)?;
        serde_json::from_slice(&body).map_err(|_| {
            Outcome::Failed("FCM token endpoint's answer holds no access token".into())
        })
    }

    /// The signed JWT the token endpoint exchanges for an access token.
    fn assertion(&self) -> anyhow::Result<String> {
        let iat = chrono::Utc::now().timestamp();
        let claims = Assertion {
            iss: &self.client_email,
            scope: SCOPE,
            aud: &self.token_uri,
            iat,
            exp: iat + ASSERTION_LIFETIME.as_secs() as i64,
        };
        let mut header = Header::new(Algorithm::RS256);
        header.kid = self.private_key_id.clone();
        jsonwebtoken::encode(&header, &claims, &self.signing).context("signing the FCM assertion")
    }

    /// Drops `used` from the cache, unless a concurrent send already replaced it.
    async fn forget(&self, used: &str) {
        let mut cached = self.access.lock().await;
        if cached.as_ref().is_some_and(|a| a.value == used) {
            *cached = None;
        }
    }
}

/// The service account's `private_key` (PKCS#8 PEM; PKCS#1 accepted too) as jsonwebtoken
/// takes an RSA key: PKCS#1 DER. Errors say what is wrong, not what was found.
fn rsa_signing_key(pem: &str) -> anyhow::Result<EncodingKey> {
    crate::jwt::install();
    let refused = || anyhow!("private_key is not a PEM RSA private key (2048 bits or more)");
    let (label, der) = p256::pkcs8::der::pem::decode_vec(pem.as_bytes()).map_err(|_| refused())?;
    let pkcs1 = match label {
        "PRIVATE KEY" => crate::jwt::rsa_pkcs1_from_pkcs8(&der).ok_or_else(refused)?,
        "RSA PRIVATE KEY" if crate::jwt::is_rsa_pkcs1(&der) => der,
        _ => return Err(refused()),
    };
    Ok(EncodingKey::from_rsa_der(&pkcs1))
}

/// The message: data only (the app's handler wakes and connects), collapsing per device.
fn message(token: &str, urgency: Urgency) -> Value {
    let priority = match urgency {
        Urgency::Normal => "NORMAL",
        Urgency::High => "HIGH",
    };
    json!({
        "message": {
            "token": token,
            "data": {"type": "wake", "urgency": urgency.as_str()},
            "android": {"priority": priority, "ttl": TTL, "collapse_key": COLLAPSE_KEY},
        }
    })
}

/// Whether a 400's error says the registration token itself is bad (so the registration is
/// dead), rather than something else in the request: `UNREGISTERED`, or `INVALID_ARGUMENT`
/// about the token (a field violation on `message.token`, or FCM's "not a valid FCM
/// registration token").
fn token_refused(body: &[u8]) -> bool {
    let Ok(answer) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    let error = &answer["error"];
    let details = error["details"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let codes = || details.iter().filter_map(|d| d["errorCode"].as_str());
    if codes().any(|code| code == "UNREGISTERED") {
        return true;
    }
    let invalid = error["status"] == "INVALID_ARGUMENT" || codes().any(|c| c == "INVALID_ARGUMENT");
    let on_token = details
        .iter()
        .filter_map(|d| d["fieldViolations"].as_array())
        .flatten()
        .any(|violation| violation["field"] == "message.token")
        || error["message"]
            .as_str()
            .is_some_and(|m| m.contains("registration token"));
    invalid && on_token
}

#[cfg(test)]
mod tests {
    use std::{
        collections::{HashMap, HashSet},
        sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        },
    };

    use axum::{
        Form, Json, Router,
        extract::State,
        http::{HeaderMap, StatusCode},
        response::{IntoResponse, Response},
        routing::post,
    };
    use jsonwebtoken::{DecodingKey, Validation};

    use super::*;

    const KEY_PEM: &str = include_str!("../../tests/fixtures/fcm-test-key.pem");
    const CLIENT_EMAIL: &str = "kisse@test-project.iam.gserviceaccount.com";
    const PROJECT: &str = "test-project";

    /// Plays Google: the token endpoint (checking the assertion as Google does) and FCM's send
    /// endpoint (checking the access token), answering by the device token.
    struct Google {
        token_uri: String,
        public: DecodingKey,
        tokens_issued: AtomicUsize,
        valid: std::sync::Mutex<HashSet<String>>,
        messages: std::sync::Mutex<Vec<Value>>,
    }

    async fn token_endpoint(
        State(google): State<Arc<Google>>,
        Form(form): Form<HashMap<String, String>>,
    ) -> Response {
        assert_eq!(form["grant_type"], GRANT_TYPE);
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&[&google.token_uri]);
        validation.set_issuer(&[CLIENT_EMAIL]);
        validation.set_required_spec_claims(&["iss", "aud", "iat", "exp"]);
        let claims = jsonwebtoken::decode::<Value>(&form["assertion"], &google.public, &validation)
            .expect("the assertion is signed with the service account's key")
            .claims;
        assert_eq!(claims["scope"], SCOPE);
        let iat = claims["iat"].as_i64().expect("iat");
        assert_eq!(claims["exp"].as_i64(), Some(iat + 3600));
        assert!((iat - chrono::Utc::now().timestamp()).abs() < 60);
        let n = google.tokens_issued.fetch_add(1, Ordering::SeqCst) + 1;
        let access = format!("access-{n}");
        google.valid.lock().expect("lock").insert(access.clone());
        Json(json!({"access_token": access, "expires_in": 3599, "token_type": "Bearer"}))
            .into_response()
    }

    async fn send_endpoint(
        State(google): State<Arc<Google>>,
        headers: HeaderMap,
        Json(body): Json<Value>,
    ) -> Response {
        let bearer = headers["authorization"].to_str().expect("ascii");
        let access = bearer.strip_prefix("Bearer ").expect("a bearer token");
        if !google.valid.lock().expect("lock").contains(access) {
            let error = json!({"error": {"code": 401, "status": "UNAUTHENTICATED"}});
            return (StatusCode::UNAUTHORIZED, Json(error)).into_response();
        }
        google.messages.lock().expect("lock").push(body.clone());
        let fcm_error = |code: &str| json!({"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code});
        match body["message"]["token"].as_str().expect("a token") {
            "gone" => {
                let error = json!({"error": {"code": 404, "status": "NOT_FOUND",
                    "message": "Requested entity was not found.",
                    "details": [fcm_error("UNREGISTERED")]}});
                (StatusCode::NOT_FOUND, Json(error)).into_response()
            }
            "malformed" => {
                let error = json!({"error": {"code": 400, "status": "INVALID_ARGUMENT",
                    "message": "The registration token is not a valid FCM registration token",
                    "details": [fcm_error("INVALID_ARGUMENT")]}});
                (StatusCode::BAD_REQUEST, Json(error)).into_response()
            }
            "busy" => {
                let error = json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",
                    "details": [fcm_error("QUOTA_EXCEEDED")]}});
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    [("retry-after", "7")],
                    Json(error),
                )
                    .into_response()
            }
            _ => Json(json!({"name": "projects/test-project/messages/1"})).into_response(),
        }
    }

    /// A running Google on 127.0.0.1, and an `Fcm` configured for it.
    async fn google() -> (Arc<Google>, Fcm) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let (_, pkcs8) = p256::pkcs8::der::pem::decode_vec(KEY_PEM.as_bytes()).expect("pem");
        let private = ring::signature::RsaKeyPair::from_pkcs8(&pkcs8).expect("fixture key");
        let google = Arc::new(Google {
            token_uri: format!("{base}/token"),
            public: DecodingKey::from_rsa_der(private.public().as_ref()),
            tokens_issued: AtomicUsize::new(0),
            valid: Default::default(),
            messages: Default::default(),
        });
        let app = Router::new()
            .route("/token", post(token_endpoint))
            .route(
                &format!("/v1/projects/{PROJECT}/messages:send"),
                post(send_endpoint),
            )
            .with_state(google.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let account = json!({
            "type": "service_account",
            "project_id": PROJECT,
            "private_key_id": "test-key-1",
            "private_key": KEY_PEM,
            "client_email": CLIENT_EMAIL,
            "token_uri": google.token_uri,
        });
        let path = temp_file(&account.to_string());
        let fcm = Fcm::from_file(&path, &base).expect("a valid service account");
        let _ = std::fs::remove_file(path);
        (google, fcm)
    }

    fn temp_file(contents: &str) -> std::path::PathBuf {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("kisse-fcm-{}-{n}.json", std::process::id()));
        std::fs::write(&path, contents).expect("write a temporary file");
        path
    }

    /// The push client, allowed to reach 127.0.0.1.
    fn http() -> reqwest::Client {
        super::super::http::client(Duration::from_secs(10), true).expect("client")
    }

    #[tokio::test]
    async fn sends_a_data_only_wake_sharing_one_access_token() {
        let (google, fcm) = google().await;
        let http = http();
        let (normal, high) = tokio::join!(
            fcm.send(&http, "device-a", Urgency::Normal),
            fcm.send(&http, "device-b", Urgency::High),
        );
        assert_eq!((normal, high), (Outcome::Sent, Outcome::Sent));
        assert_eq!(
            fcm.send(&http, "device-a", Urgency::Normal).await,
            Outcome::Sent
        );
        assert_eq!(google.tokens_issued.load(Ordering::SeqCst), 1);
        let mut messages = google.messages.lock().expect("lock").clone();
        messages.sort_by_key(|m| m["message"]["token"].to_string());
        let expected = |token: &str, urgency: &str, priority: &str| {
            json!({"message": {"token": token,
                "data": {"type": "wake", "urgency": urgency},
                "android": {"priority": priority, "ttl": "2419200s", "collapse_key": "kisse-wake"}}})
        };
        assert_eq!(
            messages,
            [
                expected("device-a", "normal", "NORMAL"),
                expected("device-a", "normal", "NORMAL"),
                expected("device-b", "high", "HIGH"),
            ]
        );
    }

    #[tokio::test]
    async fn an_unregistered_or_invalid_token_is_gone() {
        let (_google, fcm) = google().await;
        let http = http();
        assert_eq!(
            fcm.send(&http, "gone", Urgency::Normal).await,
            Outcome::Gone
        );
        assert_eq!(
            fcm.send(&http, "malformed", Urgency::Normal).await,
            Outcome::Gone
        );
    }

    #[tokio::test]
    async fn a_throttled_send_is_retried_after_retry_after() {
        let (_google, fcm) = google().await;
        let outcome = fcm.send(&http(), "busy", Urgency::High).await;
        assert_eq!(
            outcome,
            Outcome::Retry {
                after: Some(Duration::from_secs(7))
            }
        );
    }

    #[tokio::test]
    async fn a_refused_access_token_is_dropped_and_renewed() {
        let (google, fcm) = google().await;
        let http = http();
        assert_eq!(
            fcm.send(&http, "device", Urgency::Normal).await,
            Outcome::Sent
        );
        google.valid.lock().expect("lock").clear(); // revoked at Google's end
        assert_eq!(
            fcm.send(&http, "device", Urgency::Normal).await,
            Outcome::Retry { after: None }
        );
        assert_eq!(
            fcm.send(&http, "device", Urgency::Normal).await,
            Outcome::Sent
        );
        assert_eq!(google.tokens_issued.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn only_an_error_about_the_token_makes_it_gone() {
        let bad_ttl = json!({"error": {"code": 400, "status": "INVALID_ARGUMENT",
            "message": "Invalid value at 'message.android.ttl'",
            "details": [{"@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"field": "message.android.ttl"}]}]}});
        let bad_token = json!({"error": {"code": 400, "status": "INVALID_ARGUMENT",
            "message": "Invalid value",
            "details": [{"@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"field": "message.token"}]}]}});
        let unregistered =
            json!({"error": {"code": 400, "details": [{"errorCode": "UNREGISTERED"}]}});
        assert!(!token_refused(bad_ttl.to_string().as_bytes()));
        assert!(token_refused(bad_token.to_string().as_bytes()));
        assert!(token_refused(unregistered.to_string().as_bytes()));
        assert!(!token_refused(b"<html>oops</html>"));
    }

    #[test]
    fn a_bad_service_account_file_is_refused_without_quoting_the_key() {
        let error = |contents: Option<&str>| {
            let path = match contents {
                Some(contents) => temp_file(contents),
                None => std::env::temp_dir().join("kisse-fcm-no-such-file.json"),
            };
            let message = match Fcm::from_file(&path, "https://fcm.googleapis.com") {
                Ok(_) => panic!("{contents:?} was accepted"),
                Err(e) => format!("{e:#}"),
            };
            let _ = std::fs::remove_file(path);
            message
        };
        assert!(error(None).contains("reading FCM_SERVICE_ACCOUNT_FILE"));
        assert!(error(Some("{not json")).contains("not JSON"));
        let account = |key: &str| {
            json!({"project_id": PROJECT, "client_email": CLIENT_EMAIL, "private_key": key})
                .to_string()
        };
        let no_email = json!({"project_id": PROJECT, "private_key": KEY_PEM}).to_string();
        assert!(error(Some(&no_email)).contains("\"client_email\""));
        let garbage =
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0IG1hdGVyaWFs\n-----END PRIVATE KEY-----\n";
        let message = error(Some(&account(garbage)));
        assert!(
            message.contains("private_key is not a PEM RSA private key"),
            "{message}"
        );
        assert!(!message.contains("c2VjcmV0"));
        // A P-256 key is a key, but not one Google signs with.
        let ec = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
        let ec = p256::pkcs8::EncodePrivateKey::to_pkcs8_pem(&ec, Default::default()).expect("pem");
        assert!(error(Some(&account(&ec))).contains("private_key is not"));
        // A numeric private_key is refused without serde quoting what it found.
        let numeric =
            json!({"project_id": PROJECT, "client_email": CLIENT_EMAIL, "private_key": 12345});
        assert!(!error(Some(&numeric.to_string())).contains("12345"));
    }
}
