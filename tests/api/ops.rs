//! Operations endpoints: /health, /ready (including a database that went away), /metrics,
//! the OpenAPI document and its docs page, CORS.

use crate::common::{Engine, TestApp};
use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};

scenarios!(
    health_stays_up_while_ready_follows_the_database,
    ready_reports_an_unreachable_redis,
    metrics_move_after_a_message,
    metrics_can_require_a_token,
    the_dashboard_charts_only_metrics_the_server_exports,
    made_up_http_methods_are_counted_as_other,
    openapi_lists_every_route_and_each_one_is_served,
    openapi_bodies_are_all_typed,
    unsupported_methods_are_405_with_allow,
    docs_page_and_its_assets_are_served_locally,
    cors_allows_only_the_configured_origins,
);

async fn health_stays_up_while_ready_follows_the_database(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let (status, health) = app.request(Method::GET, "/health", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health["status"], "ok");
    let (status, ready) = app.request(Method::GET, "/ready", None, None).await;
    assert_eq!(status, StatusCode::OK, "{ready}");
    assert_eq!(ready["status"], "ok");
    assert_eq!(ready["components"]["database"]["status"], "ok");
    assert!(ready["components"].get("redis").is_none());

    // The database goes away: readiness fails, liveness does not.
    app.state.store.close().await;
    let (status, ready) = app.request(Method::GET, "/ready", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{ready}");
    assert_eq!(ready["status"], "unavailable");
    assert_eq!(ready["components"]["database"]["status"], "down");
    let (status, health) = app.request(Method::GET, "/health", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health["status"], "ok");
}

async fn ready_reports_an_unreachable_redis(engine: Engine) {
    // Port 1 on loopback: nothing listens there, the connection is refused at once.
    let app = TestApp::spawn_with(engine, &[("REDIS_URL", "redis://127.0.0.1:1")]).await;
    let (status, ready) = app.request(Method::GET, "/ready", None, None).await;
    // Still ready: without Redis a node serves its own users.
    assert_eq!(status, StatusCode::OK, "{ready}");
    assert_eq!(ready["status"], "degraded");
    assert_eq!(ready["components"]["database"]["status"], "ok");
    assert_eq!(ready["components"]["redis"]["status"], "down");
}

/// The value of the sample `name{labels}` (labels in any order), 0 when absent.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .filter(|(series, _)| {
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, value)| value.parse::<f64>().expect("sample value"))
        .sum()
}

async fn metrics_text(app: &TestApp) -> String {
    let response = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("metrics");
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()[header::CONTENT_TYPE]
        .to_str()
        .expect("content type")
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    response.text().await.expect("metrics body")
}

/// The metric names a Prometheus query uses (`kisse_*` and `process_*`).
fn metric_names(expr: &str) -> Vec<&str> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|t| t.starts_with("kisse_") || t.starts_with("process_"))
        .collect()
}

/// Every metric `deploy/grafana/kisse-dashboard.json` charts is exported by `/metrics` once the
/// server has routed a message, closed a socket and answered an error: no panel is empty for
/// a name the server never writes.
async fn the_dashboard_charts_only_metrics_the_server_exports(engine: Engine) {
    let dashboard: Value =
        serde_json::from_str(include_str!("../../deploy/grafana/kisse-dashboard.json"))
            .expect("the dashboard is JSON");
    let mut wanted: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().expect("targets").iter())
        .flat_map(|t| metric_names(t["expr"].as_str().expect("expr")))
        .map(str::to_owned)
        .collect();
    wanted.sort();
    wanted.dedup();
    assert!(wanted.len() >= 20, "{wanted:?}");
    assert!(wanted.iter().any(|n| n == "process_cpu_seconds_total"));

    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let mut alice_ws = app.ws(&alice).await;
    let mut bob_ws = app.ws(&bob).await;
    alice_ws
        .send(
            "message",
            json!({"recipientId": bob.id, "messageType": "text"}),
        )
        .await;
    alice_ws.expect("message_ack").await;
    bob_ws.expect("message").await;
    bob_ws.close().await;
    let (status, _) = app.get("/api/nowhere", &alice.token).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The socket's close is counted by its task: given the usual wait.
    let deadline = std::time::Instant::now() + crate::common::WAIT;
    loop {
        let text = metrics_text(&app).await;
        let exported = |name: &str| {
            text.lines().any(|line| {
                line.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
        };
        let missing: Vec<&String> = wanted.iter().filter(|n| !exported(n)).collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "charted but not exported: {missing:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn metrics_move_after_a_message(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let mut alice_ws = app.ws(&alice).await;
    let mut bob_ws = app.ws(&bob).await;

    let before = metrics_text(&app).await;
    alice_ws
        .send(
            "message",
            json!({"recipientId": bob.id, "messageType": "text"}),
        )
        .await;
    bob_ws.expect("message").await;
    alice_ws.expect("message_ack").await;
    alice_ws.send("nonsense", json!({})).await;
    alice_ws.expect("error").await;
    let after = metrics_text(&app).await;

    // Other tests of this process share the recorder: counters only ever grow.
    let grew = |name: &str, labels: &[(&str, &str)]| {
        let (b, a) = (sample(&before, name, labels), sample(&after, name, labels));
        assert!(a > b, "{name}{labels:?}: {b} -> {a}\n{after}");
    };
    grew("kisse_messages_routed_total", &[("kind", "direct")]);
    grew(
        "kisse_message_delivery_seconds_count",
        &[("kind", "direct")],
    );
    grew(
        "kisse_ws_frames_total",
        &[("direction", "in"), ("type", "message")],
    );
    grew("kisse_errors_total", &[("code", "unknown_type")]);
    grew("kisse_ws_write_batch_frames_count", &[]);
    grew("kisse_store_group_commit_seconds_count", &[]);
    grew("kisse_store_group_rows_sum", &[("kind", "messages")]);
    grew(
        "kisse_http_requests_total",
        &[("route", "/metrics"), ("status", "200"), ("method", "GET")],
    );
    assert!(
        sample(
            &after,
            "kisse_http_requests_total",
            &[("route", "/api/auth/register"), ("status", "201")]
        ) >= 2.0
    );
    // Gauges are process-wide and every server of this test process sets them: only their
    // presence is checked here; this server's own count is on /health.
    assert!(after.contains("kisse_ws_connections ") && after.contains("kisse_users_online "));
    let (_, health) = app.request(Method::GET, "/health", None, None).await;
    assert!(
        health["sockets"].as_u64().is_some_and(|n| n >= 2),
        "{health}"
    );
    assert!(after.contains("kisse_db_pool_connections{"));
    assert!(after.contains("kisse_message_delivery_seconds_bucket{"));
    // Labels never carry ids or tokens.
    assert!(!after.contains(&alice.id) && !after.contains(&alice.token));
}

/// Any token is a valid HTTP method: a client inventing them must not create metric series.
async fn made_up_http_methods_are_counted_as_other(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let before = metrics_text(&app).await;
    for method in ["FOO", "BREW-COFFEE"] {
        let method = Method::from_bytes(method.as_bytes()).expect("a method token");
        let response = app
            .http
            .request(method, app.url("/health"))
            .send()
            .await
            .expect("request");
        assert!(response.status().is_client_error(), "{}", response.status());
    }
    let after = metrics_text(&app).await;
    let others = |text: &str| sample(text, "kisse_http_requests_total", &[("method", "other")]);
    assert!(others(&after) >= others(&before) + 2.0, "{after}");
    assert!(!after.contains("FOO") && !after.contains("BREW"), "{after}");
}

async fn metrics_can_require_a_token(engine: Engine) {
    let app = TestApp::spawn_with(engine, &[("METRICS_TOKEN", "scrape-token-1")]).await;
    let (status, body) = app.request(Method::GET, "/metrics", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body, Value::Null);
    let (status, _) = app
        .request(Method::GET, "/metrics", Some("wrong"), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let response = app
        .http
        .get(app.url("/metrics"))
        .bearer_auth("scrape-token-1")
        .send()
        .await
        .expect("metrics");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.text().await.expect("body").contains("# TYPE"));
}

/// Every route the server serves, as `METHOD path`. The router is built from the same
/// `#[utoipa::path]` annotations as the document; this list catches a route added without one
/// (or one removed), and the loop below proves each documented operation is really routed.
const ROUTES: &[&str] = &[
    "POST /api/auth/register",
    "POST /api/auth/login",
    "GET /api/auth/me",
    "DELETE /api/auth/me",
    "POST /api/auth/refresh",
    "POST /api/auth/logout",
    "POST /api/auth/logout-all",
    "POST /api/auth/password",
    "GET /api/conversations",
    "POST /api/conversations",
    "GET /api/conversations/{id}/messages",
    "POST /api/conversations/{id}/accept",
    "POST /api/messages/{id}/read",
    "POST /api/messages/{id}/content",
    "GET /api/messages/{id}/content",
    "GET /api/users/search",
    "GET /api/users/find-by-email",
    "POST /api/users/{id}/block",
    "DELETE /api/users/{id}/block",
    "GET /api/blocks",
    "POST /api/calls",
    "GET /api/calls/history",
    "GET /api/calls/active",
    "GET /api/calls/turn",
    "POST /api/presence",
    "GET /api/presence/{id}",
    "GET /api/settings/privacy",
    "PUT /api/settings/privacy",
    "PUT /api/messages/{recipient_id}",
    "PUT /api/keys",
    "GET /api/keys/count",
    "GET /api/keys/{user_id}",
    "GET /api/keys/{user_id}/{device_id}",
    "GET /api/devices",
    "DELETE /api/devices/{device_id}",
    "PUT /api/devices/{device_id}/push",
    "DELETE /api/devices/{device_id}/push",
    "GET /api/push/vapid",
    "GET /api/stories",
    "POST /api/stories",
    "POST /api/stories/{id}/view",
    "GET /api/channels",
    "POST /api/channels",
    "POST /api/channels/{id}/join",
    "POST /api/channels/{id}/leave",
    "POST /api/channels/{id}/members",
    "GET /api/channels/{id}/messages",
    "POST /api/channels/{id}/messages",
    "POST /api/admin/users/{id}/suspend",
    "DELETE /api/admin/users/{id}/suspend",
    "POST /api/admin/users/{id}/revoke-sessions",
    "DELETE /api/admin/users/{id}",
    "GET /api/admin/stats",
    "GET /ws",
    "GET /health",
    "GET /ready",
    "GET /metrics",
];

async fn openapi_lists_every_route_and_each_one_is_served(engine: Engine) {
    // With the admin API on: off, its routes answer as absent ones do.
    let app = TestApp::spawn_with(engine, &[("ADMIN_TOKEN", super::admin::ADMIN_TOKEN)]).await;
    let response = app
        .http
        .get(app.url("/api/openapi.json"))
        .send()
        .await
        .expect("openapi");
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.expect("body");
    let doc: Value = serde_json::from_str(&text).expect("the document is JSON");
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        doc["openapi"]
    );
    assert!(doc["info"]["title"].is_string());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());

    let mut documented = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("path item") {
            assert!(
                operation["responses"].is_object(),
                "{method} {path} has no responses"
            );
            documented.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    documented.sort();
    let mut expected: Vec<String> = ROUTES.iter().map(|r| r.to_string()).collect();
    expected.sort();
    assert_eq!(documented, expected);

    // Each documented operation reaches a handler: never the router's "route not found" or
    // "method not allowed" fallbacks.
    let id = uuid::Uuid::new_v4().to_string();
    for route in ROUTES {
        let (method, path) = route.split_once(' ').expect("METHOD path");
        let path = path
            .replace("{id}", &id)
            .replace("{user_id}", &id)
            .replace("{device_id}", "1");
        let method = Method::from_bytes(method.as_bytes()).expect("method");
        let response = app
            .http
            .request(method, app.url(&path))
            .send()
            .await
            .expect("request");
        let status = response.status();
        let body: Value =
            serde_json::from_str(&response.text().await.expect("body")).unwrap_or(Value::Null);
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{route}: {body}");
        assert!(
            !(status == StatusCode::NOT_FOUND && body["error"]["message"] == "route not found"),
            "{route} is documented but not routed"
        );
    }
}

/// The operations whose handler reads a JSON body.
const WITH_BODY: &[&str] = &[
    "POST /api/auth/register",
    "POST /api/auth/login",
    "POST /api/auth/refresh",
    "POST /api/auth/password",
    "DELETE /api/auth/me",
    "POST /api/conversations",
    "POST /api/messages/{id}/content",
    "POST /api/calls",
    "POST /api/presence",
    "PUT /api/settings/privacy",
    "PUT /api/devices/{device_id}/push",
    "PUT /api/keys",
    "PUT /api/messages/{recipient_id}",
    "POST /api/stories",
    "POST /api/channels",
    "POST /api/channels/{id}/members",
    "POST /api/channels/{id}/messages",
];

/// Whether `schema` says what the value is: a `$ref` to such a schema, a scalar type, an array
/// of typed items, an object with properties, or a combination of typed schemas. An empty schema
/// or a bare `object` (what `serde_json::Value` documents) is not.
fn typed(doc: &Value, schema: &Value) -> bool {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference
            .strip_prefix("#/components/schemas/")
            .expect("a local schema reference");
        let target = &doc["components"]["schemas"][name];
        return !target.is_null() && typed(doc, target);
    }
    for combined in ["allOf", "anyOf", "oneOf"] {
        if let Some(items) = schema[combined].as_array() {
            return !items.is_empty() && items.iter().all(|s| typed(doc, s));
        }
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => return false,
    };
    !types.is_empty()
        && types.iter().all(|t| match *t {
            "array" => typed(doc, &schema["items"]),
            "object" => schema["properties"]
                .as_object()
                .is_some_and(|p| !p.is_empty()),
            "string" | "integer" | "number" | "boolean" | "null" => true,
            _ => false,
        })
}

async fn openapi_bodies_are_all_typed(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let (status, doc) = app
        .request(Method::GET, "/api/openapi.json", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let error_body = json!({"$ref": "#/components/schemas/ErrorBody"});
    assert!(typed(&doc, &error_body), "the error body is typed");

    let mut with_body = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("path item") {
            let name = format!("{} {path}", method.to_uppercase());
            if let Some(request) = operation.get("requestBody") {
                with_body.push(name.clone());
                let schema = &request["content"]["application/json"]["schema"];
                assert!(typed(&doc, schema), "{name}: untyped request body {schema}");
            }
            let responses = operation["responses"].as_object().expect("responses");
            let mut successes = 0;
            for (code, response) in responses {
                let content = response.get("content").and_then(Value::as_object);
                match code.as_str() {
                    // Switching protocols, no content: nothing to describe.
                    "101" | "204" => assert!(content.is_none(), "{name} {code} has a body"),
                    // RFC 6750: a 401 has an empty body (the app reads any JSON as a user).
                    "401" => assert!(content.is_none(), "{name} 401 has a body"),
                    code if code.starts_with('2') => {
                        let content = content.unwrap_or_else(|| panic!("{name} {code}: no body"));
                        for (media, body) in content {
                            let schema = &body["schema"];
                            assert!(
                                typed(&doc, schema),
                                "{name} {code} {media}: untyped {schema}"
                            );
                        }
                    }
                    code if code.starts_with('4') => {
                        let schema = &response["content"]["application/json"]["schema"];
                        assert_eq!(schema, &error_body, "{name} {code}: not the error body");
                    }
                    _ => {}
                }
                if code.starts_with('2') || code == "101" {
                    successes += 1;
                }
            }
            assert!(successes > 0, "{name} documents no success");
        }
    }
    // Two request types of one name would share one schema (utoipa keeps the last): each body
    // names its own fields.
    let body_schema = |path: &str, method: &str| {
        let body = &doc["paths"][path][method]["requestBody"]["content"]["application/json"];
        let reference = body["schema"]["$ref"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        doc.pointer(&reference.replacen('#', "", 1))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let register = body_schema("/api/auth/register", "post");
    assert!(register["properties"]["email"].is_object(), "{register}");
    let push = body_schema("/api/devices/{device_id}/push", "put");
    assert_eq!(push["oneOf"].as_array().map(Vec::len), Some(4), "{push}");
    with_body.sort();
    let mut expected: Vec<String> = WITH_BODY.iter().map(|r| r.to_string()).collect();
    expected.sort();
    assert_eq!(with_body, expected, "the operations that take a body");
}

/// A method a path does not serve is a 405 with the error body and `Allow` (RFC 9110).
async fn unsupported_methods_are_405_with_allow(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let response = app
        .http
        .patch(app.url("/api/conversations"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    let allow = response.headers()[header::ALLOW].to_str().expect("ascii");
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
    let body: Value = response.json().await.expect("json body");
    assert_eq!(body["error"]["code"], "method_not_allowed");
}

async fn docs_page_and_its_assets_are_served_locally(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let page = app
        .http
        .get(app.url("/api/docs/"))
        .send()
        .await
        .expect("docs");
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.expect("html");
    assert!(html.contains("swagger-ui"), "{html}");
    // Every script and stylesheet is relative: served by this server, never a CDN.
    assert!(!html.contains("https://") && !html.contains("http://"));
    for asset in [
        "swagger-ui-bundle.js",
        "swagger-ui.css",
        "swagger-initializer.js",
    ] {
        let response = app
            .http
            .get(app.url(&format!("/api/docs/{asset}")))
            .send()
            .await
            .expect("asset");
        assert_eq!(response.status(), StatusCode::OK, "{asset}");
        let body = response.text().await.expect("asset body");
        if asset == "swagger-initializer.js" {
            assert!(body.contains("/api/openapi.json"), "{body}");
        }
    }
}

async fn preflight(app: &TestApp, origin: &str) -> Option<String> {
    let response = app
        .http
        .request(Method::OPTIONS, app.url("/api/auth/login"))
        .header(header::ORIGIN, origin)
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
        .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "content-type")
        .send()
        .await
        .expect("preflight");
    response
        .headers()
        .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
        .map(|v| v.to_str().expect("header").to_owned())
}

async fn cors_allows_only_the_configured_origins(engine: Engine) {
    let closed = TestApp::spawn(engine).await;
    assert_eq!(preflight(&closed, "https://app.example.com").await, None);
    drop(closed);

    let app = TestApp::spawn_with(
        engine,
        &[(
            "CORS_ALLOWED_ORIGINS",
            "https://app.example.com,http://localhost:5000",
        )],
    )
    .await;
    assert_eq!(
        preflight(&app, "https://app.example.com").await.as_deref(),
        Some("https://app.example.com")
    );
    assert_eq!(
        preflight(&app, "http://localhost:5000").await.as_deref(),
        Some("http://localhost:5000")
    );
    assert_eq!(preflight(&app, "https://evil.example").await, None);
}

/// The deployment files work as written (`scripts/check-deploy`): the systemd unit passes
/// `systemd-analyze verify` and its hardening score, the Kubernetes manifests render and probe
/// /health and /ready on the port the server listens on, and every setting they and
/// docker-compose.yml give is one the server has, with values its `check-config` accepts.
#[test]
fn the_deployment_files_are_valid() {
    let output = std::process::Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/check-deploy"))
        .arg(env!("CARGO_BIN_EXE_kisse-backend"))
        .output()
        .expect("python3 runs scripts/check-deploy");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
