//! Encrypted attachments over tus 1.0: discovery, creation, resumption after a dropped
//! connection, byte ranges, the limits refused before a byte is stored, who may do what with an
//! id, termination, expiry and account deletion; and an upload by tuspy, a tus client we did
//! not write.

use std::path::{Path, PathBuf};

use reqwest::{Method, RequestBuilder, Response, StatusCode, header};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::{
    common::{Engine, TestApp, TestUser, WAIT},
    venv::Venv,
};

scenarios!(
    discovery_names_the_protocol_and_requests_must_name_its_version,
    an_upload_interrupted_halfway_resumes_from_head_and_comes_back_whole,
    a_range_returns_its_slice_and_one_outside_the_file_416,
    bad_patches_are_refused_and_leave_the_upload_as_it_was,
    over_size_and_over_quota_uploads_are_refused_before_a_byte_is_stored,
    concurrent_creations_never_exceed_the_quota,
    only_the_uploader_resumes_or_deletes_but_anyone_signed_in_with_the_id_downloads,
    a_deleted_upload_is_gone_with_its_file,
    expired_uploads_finished_or_not_are_swept_with_their_files,
    deleting_the_account_deletes_its_attachment_files,
    tuspy_uploads_in_chunks_resumes_and_gets_the_same_bytes_back,
);

pub static TUSPY: Venv = Venv::new(
    "attachments-venv",
    "tests/attachments/requirements.txt",
    "the attachment tests",
);

/// A server whose attachments go to a directory of this test's own (removed with it).
struct Server {
    app: TestApp,
    dir: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn spawn(engine: Engine, settings: &[(&str, &str)]) -> Server {
    let dir = std::env::temp_dir().join(format!("kisse-attachments-{}", uuid::Uuid::new_v4()));
    let dir_setting = dir.display().to_string();
    let mut all = vec![("ATTACHMENT_DIR", dir_setting.as_str())];
    all.extend_from_slice(settings);
    Server {
        app: TestApp::spawn_with(engine, &all).await,
        dir,
    }
}

/// The files in the attachment directory (none if it was never made).
fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.expect("dir entry").file_name().to_string_lossy().into())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

pub fn random_bytes(len: usize) -> Vec<u8> {
    let mut bytes = vec![0; len];
    rand::fill(&mut bytes[..]);
    bytes
}

pub fn sha256(bytes: &[u8]) -> Vec<u8> {
    Sha256::digest(bytes).to_vec()
}

/// A tus request (`Tus-Resumable: 1.0.0`) as `user`.
pub fn tus(app: &TestApp, method: Method, path: &str, user: &TestUser) -> RequestBuilder {
    app.http
        .request(method, app.url(path))
        .bearer_auth(&user.token)
        .header("tus-resumable", "1.0.0")
        .timeout(WAIT * 3)
}

pub fn header_of(response: &Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", response.headers()))
        .to_str()
        .expect("ASCII header")
        .to_owned()
}

/// Starts an upload of `length` bytes: its path (the `Location`).
pub async fn create(app: &TestApp, user: &TestUser, length: usize) -> String {
    let response = tus(app, Method::POST, "/api/attachments", user)
        .header("upload-length", length.to_string())
        .header("upload-metadata", "filename cGhvdG8uZW5j")
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(header_of(&response, "tus-resumable"), "1.0.0");
    assert!(header_of(&response, "upload-expires").ends_with(" GMT"));
    let location = header_of(&response, "location");
    let id = location
        .strip_prefix("/api/attachments/")
        .expect("a Location under /api/attachments/");
    assert!(id.len() >= 32, "an id of at least 128 bits: {id}");
    location
}

pub async fn patch(
    app: &TestApp,
    user: &TestUser,
    path: &str,
    offset: usize,
    bytes: &[u8],
) -> Response {
    tus(app, Method::PATCH, path, user)
        .header("upload-offset", offset.to_string())
        .header(header::CONTENT_TYPE, "application/offset+octet-stream")
        .body(bytes.to_vec())
        .send()
        .await
        .expect("PATCH")
}

pub async fn offset(app: &TestApp, user: &TestUser, path: &str) -> (StatusCode, Option<u64>) {
    let response = tus(app, Method::HEAD, path, user)
        .send()
        .await
        .expect("HEAD");
    let offset = response
        .headers()
        .get("upload-offset")
        .map(|v| v.to_str().expect("ASCII").parse().expect("a number"));
    (response.status(), offset)
}

/// Uploads `bytes` in one PATCH: the upload's path.
pub async fn upload(app: &TestApp, user: &TestUser, bytes: &[u8]) -> String {
    let path = create(app, user, bytes.len()).await;
    let response = patch(app, user, &path, 0, bytes).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        header_of(&response, "upload-offset"),
        bytes.len().to_string()
    );
    path
}

pub async fn download(app: &TestApp, user: &TestUser, path: &str) -> (StatusCode, Vec<u8>) {
    let response = (app.http.get(app.url(path)))
        .bearer_auth(&user.token)
        .send()
        .await
        .expect("GET");
    let status = response.status();
    (status, response.bytes().await.expect("body").to_vec())
}

pub async fn error_code(response: Response) -> Value {
    let body: Value = response.json().await.expect("a JSON error");
    body["error"]["code"].clone()
}

async fn discovery_names_the_protocol_and_requests_must_name_its_version(engine: Engine) {
    let s = spawn(engine, &[("ATTACHMENT_MAX_BYTES", "5000")]).await;
    let app = &s.app;
    let response = (app.http)
        .request(Method::OPTIONS, app.url("/api/attachments"))
        .send()
        .await
        .expect("OPTIONS");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(header_of(&response, "tus-version"), "1.0.0");
    let extensions = header_of(&response, "tus-extension");
    for extension in ["creation", "expiration", "termination"] {
        assert!(
            extensions.split(',').any(|e| e == extension),
            "{extensions}"
        );
    }
    assert_eq!(header_of(&response, "tus-max-size"), "5000");

    let alice = app.register("alice").await;
    for version in [None, Some("0.2.2")] {
        let mut request = (app.http.post(app.url("/api/attachments")))
            .bearer_auth(&alice.token)
            .header("upload-length", "10");
        if let Some(version) = version {
            request = request.header("tus-resumable", version);
        }
        let response = request.send().await.expect("POST");
        assert_eq!(response.status(), StatusCode::PRECONDITION_FAILED);
        assert_eq!(header_of(&response, "tus-version"), "1.0.0");
    }
    assert_eq!(files(&s.dir), Vec::<String>::new());
}

/// Sends a PATCH at `offset` announcing all of `bytes` but only `sent` of them, then drops the
/// connection (a phone that lost its network).
pub async fn patch_and_drop(
    app: &TestApp,
    user: &TestUser,
    path: &str,
    offset: usize,
    bytes: &[u8],
    sent: usize,
) {
    let mut stream = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    let head = format!(
        "PATCH {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
         Tus-Resumable: 1.0.0\r\nUpload-Offset: {offset}\r\n\
         Content-Type: application/offset+octet-stream\r\nContent-Length: {}\r\n\r\n",
        app.addr,
        user.token,
        bytes.len()
    );
    stream.write_all(head.as_bytes()).await.expect("headers");
    stream.write_all(&bytes[..sent]).await.expect("half");
    stream.flush().await.expect("flush");
    drop(stream);
}

async fn an_upload_interrupted_halfway_resumes_from_head_and_comes_back_whole(engine: Engine) {
    let s = spawn(engine, &[("ADMIN_TOKEN", super::admin::ADMIN_TOKEN)]).await;
    let app = &s.app;
    let alice = app.register("alice").await;
    let bytes = random_bytes(300 * 1024);
    let path = create(app, &alice, bytes.len()).await;
    let half = bytes.len() / 2;
    patch_and_drop(app, &alice, &path, 0, &bytes, half).await;

    // The server keeps what it received once it sees the connection gone; HEAD tells where.
    let deadline = tokio::time::Instant::now() + WAIT;
    let resume_at = loop {
        let (status, offset) = offset(app, &alice, &path).await;
        assert_eq!(status, StatusCode::OK);
        match offset {
            Some(o) if o as usize == half => break half,
            _ if tokio::time::Instant::now() > deadline => {
                panic!("the offset stayed at {offset:?}, not {half}")
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    };
    let (status, _) = download(app, &alice, &path).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "an unfinished upload is not served"
    );

    let response = patch(app, &alice, &path, resume_at, &bytes[resume_at..]).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        header_of(&response, "upload-offset"),
        bytes.len().to_string()
    );
    assert_eq!(header_of(&response, "tus-resumable"), "1.0.0");

    let response = (app.http.get(app.url(&path)))
        .bearer_auth(&alice.token)
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header_of(&response, "content-length"),
        bytes.len().to_string()
    );
    let got = response.bytes().await.expect("body");
    assert_eq!(sha256(&got), sha256(&bytes));

    // Operators see the bytes stored.
    let stats: Value = (app.http.get(app.url("/api/admin/stats")))
        .bearer_auth(super::admin::ADMIN_TOKEN)
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("JSON");
    assert_eq!(stats["database"]["attachment_bytes"], json!(bytes.len()));
    let metrics = (app.http.get(app.url("/metrics")))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for series in [
        "kisse_attachment_bytes ",
        "kisse_attachment_uploads_in_flight ",
    ] {
        assert!(metrics.contains(series), "{series}missing from /metrics");
    }
}

async fn a_range_returns_its_slice_and_one_outside_the_file_416(engine: Engine) {
    let s = spawn(engine, &[]).await;
    let app = &s.app;
    let alice = app.register("alice").await;
    let bytes = random_bytes(1000);
    let path = upload(app, &alice, &bytes).await;
    let get_range = |range: &'static str| {
        (app.http.get(app.url(&path)))
            .bearer_auth(&alice.token)
            .header(header::RANGE, range)
            .send()
    };

    let response = get_range("bytes=100-199").await.expect("GET");
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(header_of(&response, "content-range"), "bytes 100-199/1000");
    assert_eq!(header_of(&response, "content-length"), "100");
    assert_eq!(&response.bytes().await.expect("body")[..], &bytes[100..200]);

    let response = get_range("bytes=-10").await.expect("GET");
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(header_of(&response, "content-range"), "bytes 990-999/1000");
    assert_eq!(&response.bytes().await.expect("body")[..], &bytes[990..]);

    let response = get_range("bytes=1000-").await.expect("GET");
    assert_eq!(response.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header_of(&response, "content-range"), "bytes */1000");
    assert_eq!(error_code(response).await, "range_not_satisfiable");
}

async fn bad_patches_are_refused_and_leave_the_upload_as_it_was(engine: Engine) {
    let s = spawn(engine, &[]).await;
    let app = &s.app;
    let alice = app.register("alice").await;
    let bytes = random_bytes(100);
    let path = create(app, &alice, bytes.len()).await;
    assert_eq!(
        patch(app, &alice, &path, 0, &bytes[..40]).await.status(),
        StatusCode::NO_CONTENT
    );

    // Not where the upload stands.
    let response = patch(app, &alice, &path, 10, &bytes[10..]).await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(response).await, "offset_mismatch");
    // Not a tus body.
    let response = tus(app, Method::PATCH, &path, &alice)
        .header("upload-offset", "40")
        .header(header::CONTENT_TYPE, "application/json")
        .body(bytes[40..].to_vec())
        .send()
        .await
        .expect("PATCH");
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // More than the upload lacks.
    let mut too_long = bytes[40..].to_vec();
    too_long.push(0);
    let response = patch(app, &alice, &path, 40, &too_long).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);

    assert_eq!(offset(app, &alice, &path).await, (StatusCode::OK, Some(40)));
    let response = patch(app, &alice, &path, 40, &bytes[40..]).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(download(app, &alice, &path).await, (StatusCode::OK, bytes));
}

async fn over_size_and_over_quota_uploads_are_refused_before_a_byte_is_stored(engine: Engine) {
    let s = spawn(
        engine,
        &[
            ("ATTACHMENT_MAX_BYTES", "1000"),
            ("ATTACHMENT_QUOTA_BYTES", "1500"),
        ],
    )
    .await;
    let app = &s.app;
    let alice = app.register("alice").await;
    let post = |length: &'static str| {
        tus(app, Method::POST, "/api/attachments", &alice)
            .header("upload-length", length)
            .send()
    };

    let response = post("1001").await.expect("POST");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(response).await, "payload_too_large");
    assert_eq!(files(&s.dir), Vec::<String>::new());

    let first = create(app, &alice, 1000).await;
    let id = first.rsplit('/').next().expect("id");
    // Unfinished uploads count by their declared length: 1000 + 600 > 1500.
    let response = post("600").await.expect("POST");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(response).await, "quota_exceeded");
    assert_eq!(files(&s.dir), vec![format!("{id}.part")]);
    // What fits is accepted; another user has a quota of their own.
    create(app, &alice, 500).await;
    let bob = app.register("bob").await;
    create(app, &bob, 1000).await;
    assert_eq!(files(&s.dir).len(), 3);
}

/// Many creations at once by one user, in a few rounds (a user each): each creation checks the
/// quota against the others' rows, so exactly as many as fit are accepted (on PostgreSQL,
/// without a lock per user, several would each see the room before the others took it).
async fn concurrent_creations_never_exceed_the_quota(engine: Engine) {
    const FIT: usize = 16;
    const TRIES: usize = 64;
    const ROUNDS: usize = 5;
    // As many connections as requests can overlap, so that their statements do.
    let s = spawn(
        engine,
        &[
            ("ATTACHMENT_QUOTA_BYTES", "1600"),
            ("DB_MAX_CONNECTIONS", "32"),
        ],
    )
    .await;
    let app = &s.app;
    for round in 0..ROUNDS {
        let user = app.register(&format!("user{round}")).await;
        let post = || {
            tus(app, Method::POST, "/api/attachments", &user)
                .header("upload-length", "100")
                .send()
        };
        let statuses: Vec<StatusCode> = futures_util::future::join_all((0..TRIES).map(|_| post()))
            .await
            .into_iter()
            .map(|r| r.expect("POST").status())
            .collect();
        let created = statuses
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count();
        let refused = (statuses.iter())
            .filter(|s| **s == StatusCode::PAYLOAD_TOO_LARGE)
            .count();
        assert_eq!(
            (created, refused),
            (FIT, TRIES - FIT),
            "round {round}: {statuses:?}"
        );
    }
    assert_eq!(files(&s.dir).len(), ROUNDS * FIT);
}

async fn only_the_uploader_resumes_or_deletes_but_anyone_signed_in_with_the_id_downloads(
    engine: Engine,
) {
    let s = spawn(engine, &[]).await;
    let app = &s.app;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let bytes = random_bytes(2000);
    let path = create(app, &alice, bytes.len()).await;
    patch(app, &alice, &path, 0, &bytes[..1000]).await;

    assert_eq!(offset(app, &bob, &path).await.0, StatusCode::NOT_FOUND);
    let response = patch(app, &bob, &path, 1000, &bytes[1000..]).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let response = tus(app, Method::DELETE, &path, &bob)
        .send()
        .await
        .expect("DELETE");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(download(app, &bob, &path).await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        offset(app, &alice, &path).await,
        (StatusCode::OK, Some(1000))
    );

    patch(app, &alice, &path, 1000, &bytes[1000..]).await;
    assert_eq!(download(app, &bob, &path).await, (StatusCode::OK, bytes));
    let response = app.http.get(app.url(&path)).send().await.expect("GET");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    // A made-up id, and one that is not an id at all, are unknown.
    let made_up = format!("/api/attachments/{}", "0".repeat(32));
    assert_eq!(download(app, &bob, &made_up).await.0, StatusCode::NOT_FOUND);
    let traversal = "/api/attachments/..%2F..%2Fetc%2Fpasswd";
    assert_eq!(
        download(app, &bob, traversal).await.0,
        StatusCode::NOT_FOUND
    );
}

async fn a_deleted_upload_is_gone_with_its_file(engine: Engine) {
    let s = spawn(engine, &[]).await;
    let app = &s.app;
    let alice = app.register("alice").await;
    let finished = upload(app, &alice, &random_bytes(100)).await;
    let unfinished = create(app, &alice, 100).await;
    assert_eq!(files(&s.dir).len(), 2);

    for path in [&finished, &unfinished] {
        let response = tus(app, Method::DELETE, path, &alice)
            .send()
            .await
            .expect("DELETE");
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        assert_eq!(offset(app, &alice, path).await.0, StatusCode::NOT_FOUND);
        assert_eq!(download(app, &alice, path).await.0, StatusCode::NOT_FOUND);
    }
    assert_eq!(files(&s.dir), Vec::<String>::new());
}

async fn expired_uploads_finished_or_not_are_swept_with_their_files(engine: Engine) {
    let s = spawn(engine, &[("ATTACHMENT_TTL", "3600")]).await;
    let app = &s.app;
    let alice = app.register("alice").await;
    let finished = upload(app, &alice, &random_bytes(100)).await;
    let unfinished = create(app, &alice, 100).await;
    patch(app, &alice, &unfinished, 0, &random_bytes(50)).await;

    let now = chrono::Utc::now();
    let swept = kisse_backend::domain::retention::sweep(&app.state, now)
        .await
        .expect("sweep");
    assert_eq!(swept.attachments, 0, "nothing expired yet");
    assert_eq!(files(&s.dir).len(), 2);

    let later = now + chrono::Duration::hours(2);
    let swept = kisse_backend::domain::retention::sweep(&app.state, later)
        .await
        .expect("sweep");
    assert_eq!(swept.attachments, 2);
    assert_eq!(files(&s.dir), Vec::<String>::new());
    assert_eq!(
        download(app, &alice, &finished).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        offset(app, &alice, &unfinished).await.0,
        StatusCode::NOT_FOUND
    );
}

async fn deleting_the_account_deletes_its_attachment_files(engine: Engine) {
    let s = spawn(engine, &[]).await;
    let app = &s.app;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    upload(app, &alice, &random_bytes(100)).await;
    create(app, &alice, 100).await;
    let kept = upload(app, &bob, &random_bytes(100)).await;
    assert_eq!(files(&s.dir).len(), 3);

    app.delete_account(&alice).await;
    let id = kept.rsplit('/').next().expect("id");
    assert_eq!(
        files(&s.dir),
        vec![id.to_owned()],
        "only bob's file is left"
    );
}

async fn tuspy_uploads_in_chunks_resumes_and_gets_the_same_bytes_back(engine: Engine) {
    let s = spawn(engine, &[]).await;
    let app = &s.app;
    let alice = app.register("alice").await;
    let bytes = random_bytes(200 * 1024 + 123);
    let path = tuspy_upload(app, &alice, &bytes, 64 * 1024).await;
    let (status, got) = download(app, &alice, &path).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sha256(&got), sha256(&bytes));
}

/// Uploads `bytes` with tuspy in chunks of `chunk` bytes, stopping after the first and resuming
/// (`tests/attachments/tus_upload.py`): the upload's path.
pub async fn tuspy_upload(app: &TestApp, user: &TestUser, bytes: &[u8], chunk: usize) -> String {
    let file = std::env::temp_dir().join(format!("kisse-upload-{}", uuid::Uuid::new_v4()));
    std::fs::write(&file, bytes).expect("the file to upload");
    let python = TUSPY.python().await;
    let output = tokio::process::Command::new(python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/attachments/tus_upload.py"))
        .arg(app.url("/api/attachments"))
        .arg(&user.token)
        .arg(&file)
        .arg(chunk.to_string())
        .output()
        .await
        .expect("run tus_upload.py");
    let _ = std::fs::remove_file(&file);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "tus_upload.py: {}\n{stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let url = stdout.lines().last().expect("the upload's URL");
    url.strip_prefix(&app.url(""))
        .unwrap_or_else(|| panic!("an URL of this server: {url}"))
        .to_owned()
}
