//! APNs with token-based authentication: an ES256 JWT signed with the operator's .p8 key.
//! A normal wake-up is a silent background push; a call ring is an alert carrying only a
//! localizable key, for the app's notification extension to replace with what it fetches.

use std::{
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use anyhow::{Context, anyhow};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use serde::Serialize;
use serde_json::{Value, json};

use super::{Outcome, Urgency, retry_after};
use crate::config::Config;

/// How long one provider token is used: Apple refuses tokens older than an hour, and answers
/// `TooManyProviderTokenUpdates` to a new one more often than every 20 minutes.
const TOKEN_REUSE: Duration = Duration::from_secs(50 * 60);
/// How long APNs keeps an undelivered wake-up (as for Web Push and FCM).
const EXPIRATION: Duration = Duration::from_secs(28 * 86_400);
/// A newer wake-up replaces one APNs still holds for the device.
const COLLAPSE_ID: &str = "kisse-wake";
/// The alert of a call ring: a key the app localizes (its extension then fetches the rest).
const ALERT_LOC_KEY: &str = "KISSE_WAKE";

pub struct Apns {
    signing: EncodingKey,
    key_id: String,
    team_id: String,
    default_topic: Option<String>,
    base_url: String,
    /// The provider token in use. A std mutex: it is never held across an await.
    provider: Mutex<Option<ProviderToken>>,
}

struct ProviderToken {
    jwt: String,
    made: Instant,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    iat: i64,
}

impl Apns {
    /// Reads the .p8 key at `key_file` and the key id, team id and topic from `config`.
    /// Errors name the setting at fault, never the key.
    pub fn from_settings(config: &Config, key_file: &str) -> anyhow::Result<Self> {
        let key_id = config
            .apns_key_id
            .clone()
            .context("APNS_KEY_ID is required with APNS_KEY_FILE")?;
        let team_id = config
            .apns_team_id
            .clone()
            .context("APNS_TEAM_ID is required with APNS_KEY_FILE")?;
        let pem = std::fs::read_to_string(key_file)
            .with_context(|| format!("reading APNS_KEY_FILE {key_file}"))?;
        let secret = p256::SecretKey::from_pkcs8_pem(&pem).map_err(|_| {
            anyhow!("APNS_KEY_FILE {key_file} is not a PKCS#8 PEM P-256 key (an APNs .p8)")
        })?;
        let der = secret
            .to_pkcs8_der()
            .map_err(|_| anyhow!("APNS_KEY_FILE {key_file} cannot be encoded"))?;
        crate::jwt::install();
        let base_url = config.apns_base_url.trim_end_matches('/').to_owned();
        reqwest::Url::parse(&base_url).context("APNS_BASE_URL is not a URL")?;
        let apns = Self {
            signing: EncodingKey::from_ec_der(der.as_bytes()),
            key_id,
            team_id,
            default_topic: config.apns_topic.clone(),
            base_url,
            provider: Mutex::new(None),
        };
        // Signed once now, so that a key that cannot sign stops the start-up, not each push.
        apns.provider_token()?;
        Ok(apns)
    }

    pub async fn send(
        &self,
        http: &reqwest::Client,
        token: &str,
        topic: Option<&str>,
        urgency: Urgency,
    ) -> Outcome {
        let Some(topic) = topic.or(self.default_topic.as_deref()) else {
            return Outcome::Failed(
                "no APNs topic: the registration has none and APNS_TOPIC is unset".into(),
            );
        };
        // Device tokens are hex. Anything else would be put in the URL's path, and APNs would
        // only answer BadDeviceToken to it: the registration is dead either way.
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Outcome::Gone;
        }
        let jwt = match self.provider_token() {
            Ok(jwt) => jwt,
            Err(e) => return Outcome::Failed(format!("{e:#}")),
        };
        let (push_type, priority) = match urgency {
            Urgency::Normal => ("background", "5"),
            Urgency::High => ("alert", "10"),
        };
        let expiration = chrono::Utc::now().timestamp() + EXPIRATION.as_secs() as i64;
        let request = http
            .post(format!("{}/3/device/{token}", self.base_url))
            .header(AUTHORIZATION, format!("bearer {jwt}"))
            .header("apns-topic", topic)
            .header("apns-push-type", push_type)
            .header("apns-priority", priority)
            .header("apns-expiration", expiration)
            .header("apns-collapse-id", COLLAPSE_ID)
            .header(CONTENT_TYPE, "application/json")
            .body(payload(urgency).to_string());
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => return Outcome::from_error(e),
        };
        let status = response.status().as_u16();
        let after = retry_after(response.headers());
        if (200..300).contains(&status) {
            return Outcome::Sent;
        }
        let reason = reason(&response.bytes().await.unwrap_or_default());
        match (status, reason.as_str()) {
            (410, _) | (400, "BadDeviceToken" | "DeviceTokenNotForTopic") => Outcome::Gone,
            (403, "ExpiredProviderToken" | "InvalidProviderToken") => {
                self.forget(&jwt);
                Outcome::Retry { after: None }
            }
            (429 | 500..=599, _) => Outcome::Retry { after },
            // Not `Outcome::from_status`: APNs's 404 is a bad path, not an unknown device.
            _ => Outcome::Failed(format!("APNs answered {status} {reason}")),
        }
    }

    /// The provider token in use, or a new one when it is ~50 minutes old.
    fn provider_token(&self) -> anyhow::Result<String> {
        let mut cached = self.provider.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(token) = cached.as_ref().filter(|t| t.made.elapsed() < TOKEN_REUSE) {
            return Ok(token.jwt.clone());
        }
        let jwt = self.sign(chrono::Utc::now().timestamp())?;
        *cached = Some(ProviderToken {
            jwt: jwt.clone(),
            made: Instant::now(),
        });
        Ok(jwt)
    }

    /// A provider token issued at `iat`: header `alg` and `kid`, claims `iss` and `iat`, as
    /// Apple documents it.
    fn sign(&self, iat: i64) -> anyhow::Result<String> {
        let header = Header {
            typ: None,
            kid: Some(self.key_id.clone()),
            ..Header::new(Algorithm::ES256)
        };
        let claims = Claims {
            iss: &self.team_id,
            iat,
        };
        jsonwebtoken::encode(&header, &claims, &self.signing)
            .context("signing the APNs provider token")
    }

    /// Drops `refused` so that the next send signs a new token, unless a concurrent send
    /// already did.
    fn forget(&self, refused: &str) {
        let mut cached = self.provider.lock().unwrap_or_else(PoisonError::into_inner);
        if cached.as_ref().is_some_and(|t| t.jwt == refused) {
            *cached = None;
        }
    }
}

/// The notification: the wake marker beside `aps`, nothing else.
fn payload(urgency: Urgency) -> Value {
    let aps = match urgency {
        Urgency::Normal => json!({"content-available": 1}),
        Urgency::High => json!({"alert": {"loc-key": ALERT_LOC_KEY}, "mutable-content": 1}),
    };
    json!({"aps": aps, "type": "wake", "urgency": urgency.as_str()})
}

/// APNs's `reason` for a refusal, when it is one of its plain identifiers (anything else is
/// not echoed into logs).
fn reason(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|answer| answer["reason"].as_str().map(str::to_owned))
        .filter(|r| r.len() <= 64 && r.bytes().all(|b| b.is_ascii_alphanumeric()))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::{
        path::PathBuf,
        sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        },
    };

    use axum::{
        Json, Router,
        body::Bytes,
        extract::{Path, State},
        http::{HeaderMap, StatusCode},
        response::{IntoResponse, Response},
        routing::post,
    };
    use jsonwebtoken::{DecodingKey, Validation};

    use super::*;

    const KEY_ID: &str = "ABC123DEFG";
    const TEAM_ID: &str = "DEF123GHIJ";
    const DEFAULT_TOPIC: &str = "app.kisse.ios";

    /// A push as APNs received it (after checking its provider token).
    #[derive(Clone, Debug)]
    struct Received {
        token: String,
        headers: HeaderMap,
        body: Value,
    }

    /// Plays APNs: checks the provider token as Apple does (signature with the .p8's public
    /// key, `kid`, `iss`, age), and answers by the device token.
    struct Apple {
        public: DecodingKey,
        received: std::sync::Mutex<Vec<Received>>,
    }

    fn refuse(status: StatusCode, reason: &str) -> Response {
        (status, Json(json!({"reason": reason}))).into_response()
    }

    async fn device_endpoint(
        State(apple): State<Arc<Apple>>,
        Path(token): Path<String>,
        headers: HeaderMap,
        body: Bytes,
    ) -> Response {
        let Some(jwt) = headers["authorization"]
            .to_str()
            .expect("ascii")
            .strip_prefix("bearer ")
        else {
            return refuse(StatusCode::FORBIDDEN, "MissingProviderToken");
        };
        let header = jsonwebtoken::decode_header(jwt).expect("a JWT");
        assert_eq!(header.alg, Algorithm::ES256);
        assert_eq!(header.kid.as_deref(), Some(KEY_ID));
        let mut validation = Validation::new(Algorithm::ES256);
        validation.validate_exp = false;
        validation.set_required_spec_claims(&["iss"]);
        validation.set_issuer(&[TEAM_ID]);
        let Ok(claims) = jsonwebtoken::decode::<Value>(jwt, &apple.public, &validation) else {
            return refuse(StatusCode::FORBIDDEN, "InvalidProviderToken");
        };
        let iat = claims.claims["iat"].as_i64().expect("iat");
        if chrono::Utc::now().timestamp() - iat > 3600 {
            return refuse(StatusCode::FORBIDDEN, "ExpiredProviderToken");
        }
        let body: Value = serde_json::from_slice(&body).expect("a JSON body");
        apple.received.lock().expect("lock").push(Received {
            token: token.clone(),
            headers,
            body,
        });
        match token.as_str() {
            "0b" => refuse(StatusCode::GONE, "Unregistered"),
            "0c" => refuse(StatusCode::BAD_REQUEST, "BadDeviceToken"),
            "0d" => (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "3")],
                Json(json!({"reason": "TooManyRequests"})),
            )
                .into_response(),
            "0e" => refuse(StatusCode::BAD_REQUEST, "TopicDisallowed"),
            _ => StatusCode::OK.into_response(),
        }
    }

    struct Setup {
        apple: Arc<Apple>,
        apns: Apns,
        key_file: PathBuf,
    }

    impl Drop for Setup {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.key_file);
        }
    }

    /// A running APNs on 127.0.0.1 and an `Apns` for it, with a fresh .p8 key; `topic` is
    /// APNS_TOPIC.
    async fn apple(topic: Option<&str>) -> Setup {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let secret = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
        let apple = Arc::new(Apple {
            public: DecodingKey::from_ec_der(&secret.public_key().to_sec1_bytes()),
            received: Default::default(),
        });
        let app = Router::new()
            .route("/3/device/{token}", post(device_endpoint))
            .with_state(apple.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let pem = secret.to_pkcs8_pem(Default::default()).expect("pem");
        let key_file = temp_file(&pem);
        let mut settings = vec![
            ("APNS_KEY_ID", KEY_ID),
            ("APNS_TEAM_ID", TEAM_ID),
            ("APNS_BASE_URL", base.as_str()),
        ];
        settings.extend(topic.map(|t| ("APNS_TOPIC", t)));
        let apns = Apns::from_settings(&config(&settings), key_file.to_str().expect("utf-8"))
            .expect("valid APNs settings");
        Setup {
            apple,
            apns,
            key_file,
        }
    }

    fn config(pairs: &[(&str, &str)]) -> Config {
        Config::from_lookup(|k| {
            pairs
                .iter()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| v.to_string())
        })
        .expect("valid settings")
    }

    fn temp_file(contents: &str) -> PathBuf {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("kisse-apns-{}-{n}.p8", std::process::id()));
        std::fs::write(&path, contents).expect("write a temporary file");
        path
    }

    /// The push client, allowed to reach 127.0.0.1.
    fn http() -> reqwest::Client {
        super::super::http::client(Duration::from_secs(10), true).expect("client")
    }

    fn header<'a>(received: &'a Received, name: &str) -> &'a str {
        received.headers[name].to_str().expect("ascii")
    }

    #[tokio::test]
    async fn a_wake_is_silent_and_a_ring_is_an_alert_with_a_key_only() {
        let setup = apple(Some(DEFAULT_TOPIC)).await;
        let http = http();
        let apns = &setup.apns;
        assert_eq!(
            apns.send(&http, "0a", None, Urgency::Normal).await,
            Outcome::Sent
        );
        let ring = apns.send(&http, "0a", Some("app.kisse.beta"), Urgency::High);
        assert_eq!(ring.await, Outcome::Sent);

        let received = setup.apple.received.lock().expect("lock").clone();
        let [wake, ring] = received.as_slice() else {
            panic!("two pushes expected, got {received:?}")
        };
        assert_eq!(wake.token, "0a");
        assert_eq!(header(wake, "apns-topic"), DEFAULT_TOPIC);
        assert_eq!(header(wake, "apns-push-type"), "background");
        assert_eq!(header(wake, "apns-priority"), "5");
        assert_eq!(
            wake.body,
            json!({"aps": {"content-available": 1}, "type": "wake", "urgency": "normal"})
        );
        assert_eq!(header(ring, "apns-topic"), "app.kisse.beta");
        assert_eq!(header(ring, "apns-push-type"), "alert");
        assert_eq!(header(ring, "apns-priority"), "10");
        assert_eq!(
            ring.body,
            json!({"aps": {"alert": {"loc-key": "KISSE_WAKE"}, "mutable-content": 1},
                "type": "wake", "urgency": "high"})
        );
        let in_28_days = chrono::Utc::now().timestamp() + 28 * 86_400;
        for push in [wake, ring] {
            assert_eq!(header(push, "apns-collapse-id"), "kisse-wake");
            let expiration: i64 = header(push, "apns-expiration").parse().expect("a number");
            assert!((expiration - in_28_days).abs() < 60, "{expiration}");
        }
        // One provider token for both.
        assert_eq!(header(wake, "authorization"), header(ring, "authorization"));
    }

    #[tokio::test]
    async fn an_unregistered_or_bad_token_is_gone() {
        let setup = apple(Some(DEFAULT_TOPIC)).await;
        let http = http();
        for token in ["0b", "0c", "not-hex/../x"] {
            let outcome = setup.apns.send(&http, token, None, Urgency::Normal).await;
            assert_eq!(outcome, Outcome::Gone, "{token}");
        }
        let outcome = setup.apns.send(&http, "0e", None, Urgency::Normal).await;
        assert_eq!(
            outcome,
            Outcome::Failed("APNs answered 400 TopicDisallowed".into())
        );
    }

    #[tokio::test]
    async fn a_throttled_send_is_retried_after_retry_after() {
        let setup = apple(Some(DEFAULT_TOPIC)).await;
        let outcome = setup.apns.send(&http(), "0d", None, Urgency::High).await;
        assert_eq!(
            outcome,
            Outcome::Retry {
                after: Some(Duration::from_secs(3))
            }
        );
    }

    #[tokio::test]
    async fn an_expired_provider_token_is_replaced() {
        let setup = apple(Some(DEFAULT_TOPIC)).await;
        let http = http();
        // A token APNs finds too old (say, the clock moved): refused, dropped, then renewed.
        let stale = setup
            .apns
            .sign(chrono::Utc::now().timestamp() - 2 * 3600)
            .expect("signed");
        *setup.apns.provider.lock().expect("lock") = Some(ProviderToken {
            jwt: stale.clone(),
            made: Instant::now(),
        });
        let outcome = setup.apns.send(&http, "0a", None, Urgency::Normal).await;
        assert_eq!(outcome, Outcome::Retry { after: None });
        assert_eq!(
            setup.apns.send(&http, "0a", None, Urgency::Normal).await,
            Outcome::Sent
        );
        let received = setup.apple.received.lock().expect("lock").clone();
        assert_eq!(received.len(), 1);
        assert_ne!(
            header(&received[0], "authorization"),
            format!("bearer {stale}")
        );
    }

    #[tokio::test]
    async fn without_a_topic_nothing_is_sent() {
        let setup = apple(None).await;
        let outcome = setup.apns.send(&http(), "0a", None, Urgency::Normal).await;
        assert!(
            matches!(outcome, Outcome::Failed(ref e) if e.contains("topic")),
            "{outcome:?}"
        );
        assert!(setup.apple.received.lock().expect("lock").is_empty());
    }

    #[test]
    fn incomplete_settings_or_a_bad_key_stop_the_start_up() {
        let secret = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
        let good = temp_file(&secret.to_pkcs8_pem(Default::default()).expect("pem"));
        let garbage =
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0IG1hdGVyaWFs\n-----END PRIVATE KEY-----\n";
        let bad = temp_file(garbage);
        let error = |pairs: &[(&str, &str)], file: &std::path::Path| match Apns::from_settings(
            &config(pairs),
            file.to_str().expect("utf-8"),
        ) {
            Ok(_) => panic!("{pairs:?} {file:?} accepted"),
            Err(e) => format!("{e:#}"),
        };
        let ids = [("APNS_KEY_ID", KEY_ID), ("APNS_TEAM_ID", TEAM_ID)];
        assert!(error(&ids[1..], &good).contains("APNS_KEY_ID"));
        assert!(error(&ids[..1], &good).contains("APNS_TEAM_ID"));
        let missing = std::env::temp_dir().join("kisse-apns-no-such-key.p8");
        assert!(error(&ids, &missing).contains("reading APNS_KEY_FILE"));
        let message = error(&ids, &bad);
        assert!(message.contains("not a PKCS#8 PEM P-256 key"), "{message}");
        assert!(!message.contains("c2VjcmV0"));
        assert!(Apns::from_settings(&config(&ids), good.to_str().expect("utf-8")).is_ok());
        let _ = std::fs::remove_file(good);
        let _ = std::fs::remove_file(bad);
    }
}
