//! Attachments in an S3-compatible bucket (`ATTACHMENT_S3_*`), against moto's S3 server (an
//! implementation we did not write, `tests/attachments/moto_s3.py`, started per test on a
//! loopback port): uploads in chunks smaller and larger than a 5 MiB part, interrupted and
//! resumed, byte ranges, and what DELETE, the expiry sweep and account deletion leave in the
//! bucket, looked at from outside with boto3; tuspy; and two nodes that share no disk.

use std::{collections::BTreeMap, path::PathBuf, process::Stdio, time::Duration};

use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::{
    attachments::{
        create, download, header_of, offset, patch, patch_and_drop, random_bytes, sha256, tus,
        tuspy_upload, upload,
    },
    common::{Engine, TestApp, TestUser, WAIT},
    venv::Venv,
};

scenarios!(
    chunks_smaller_and_larger_than_a_part_interrupted_and_resumed_come_back_whole,
    a_deleted_upload_leaves_nothing_in_the_bucket,
    expired_uploads_are_swept_from_the_bucket,
    deleting_the_account_deletes_its_objects,
    tuspy_uploads_to_s3_in_chunks_smaller_than_a_part,
);

static MOTO: Venv = Venv::new(
    "attachments-s3-venv",
    "tests/attachments/s3-requirements.txt",
    "the S3 attachment tests",
);

/// The part size of S3 uploads (`S3Settings::PART_BYTES`): 5 MiB, S3's minimum.
const PART: usize = 5 * 1024 * 1024;
const BUCKET: &str = "kisse-attachments";

/// moto's S3 server, stopped when dropped (its standard input closes; `kill_on_drop` besides).
struct Moto {
    endpoint: String,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    _child: Child,
}

/// What the bucket holds: each object's size by key, and the keys of unfinished multipart
/// uploads.
#[derive(Debug, PartialEq)]
struct Bucket {
    objects: BTreeMap<String, u64>,
    uploads: Vec<String>,
}

impl Moto {
    /// Starts it: PANICS if moto cannot be installed or started (a skipped test proves nothing).
    async fn start() -> Self {
        let python = MOTO.python().await;
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/attachments/moto_s3.py");
        let mut child = tokio::process::Command::new(python)
            .arg(script)
            .arg(BUCKET)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start moto_s3.py");
        let stdin = child.stdin.take().expect("moto's stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("moto's stdout")).lines();
        let endpoint = tokio::time::timeout(WAIT * 6, stdout.next_line())
            .await
            .expect("moto starts within 30 s")
            .expect("moto's first line")
            .expect("moto_s3.py exited before serving: see its error above");
        assert!(endpoint.starts_with("http://127.0.0.1:"), "{endpoint}");
        Self {
            endpoint,
            stdin,
            stdout,
            _child: child,
        }
    }

    /// The settings of a server whose attachments go to this bucket.
    fn settings(&self) -> Vec<(&'static str, String)> {
        vec![
            ("ATTACHMENT_S3_BUCKET", BUCKET.to_owned()),
            ("ATTACHMENT_S3_ENDPOINT", self.endpoint.clone()),
            ("ATTACHMENT_S3_ALLOW_HTTP", "true".to_owned()),
            ("ATTACHMENT_S3_ACCESS_KEY_ID", "testing".to_owned()),
            ("ATTACHMENT_S3_SECRET_ACCESS_KEY", "testing".to_owned()),
        ]
    }

    /// What the bucket holds now, as boto3 lists it through moto's S3 API.
    async fn bucket(&mut self) -> Bucket {
        self.stdin.write_all(b"list\n").await.expect("ask moto");
        self.stdin.flush().await.expect("ask moto");
        let line = tokio::time::timeout(WAIT, self.stdout.next_line())
            .await
            .expect("moto answers")
            .expect("moto's answer")
            .expect("moto stopped");
        let listed: Value = serde_json::from_str(&line).expect("JSON");
        let objects = (listed["objects"].as_object().expect("objects").iter())
            .map(|(key, size)| (key.clone(), size.as_u64().expect("a size")))
            .collect();
        let uploads = (listed["uploads"].as_array().expect("uploads").iter())
            .map(|key| key.as_str().expect("a key").to_owned())
            .collect();
        Bucket { objects, uploads }
    }
}

/// A server on `engine` whose attachments go to `moto`'s bucket, with `more` settings, and an
/// `ATTACHMENT_DIR` of its own that must stay empty.
struct Server {
    app: TestApp,
    dir: PathBuf,
}

impl Server {
    /// Asserts that nothing went to the local disk.
    fn assert_no_files(&self) {
        assert!(
            !self.dir.exists(),
            "{} was made: attachments went to disk",
            self.dir.display()
        );
    }
}

fn scratch_dir() -> PathBuf {
    std::env::temp_dir().join(format!("kisse-s3-dir-{}", uuid::Uuid::new_v4()))
}

async fn spawn(engine: Engine, moto: &Moto, more: &[(&str, &str)]) -> Server {
    let dir = scratch_dir();
    let dir_setting = dir.display().to_string();
    let s3 = moto.settings();
    let mut all: Vec<(&str, &str)> = s3.iter().map(|(k, v)| (*k, v.as_str())).collect();
    all.push(("ATTACHMENT_DIR", &dir_setting));
    all.extend_from_slice(more);
    Server {
        app: TestApp::spawn_with(engine, &all).await,
        dir,
    }
}

fn id_of(path: &str) -> String {
    path.rsplit('/').next().expect("an id").to_owned()
}

/// Waits until the upload at `path` stands at `expected` (the server records what it stored
/// once it sees the connection gone).
async fn offset_reaches(app: &TestApp, user: &TestUser, path: &str, expected: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, at) = offset(app, user, path).await;
        assert_eq!(status, StatusCode::OK);
        if at == Some(expected as u64) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the offset stayed at {at:?}, not {expected}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn chunks_smaller_and_larger_than_a_part_interrupted_and_resumed_come_back_whole(
    engine: Engine,
) {
    let mut moto = Moto::start().await;
    let s = spawn(engine, &moto, &[("ADMIN_TOKEN", super::admin::ADMIN_TOKEN)]).await;
    let app = &s.app;
    let alice = app.register("alice").await;
    let bytes = random_bytes(3 * PART + 1_500_000);
    let path = create(app, &alice, bytes.len()).await;
    let id = id_of(&path);

    // A chunk smaller than a part: kept as the tail object, no multipart upload yet.
    let first = 1_000_000;
    let response = patch(app, &alice, &path, 0, &bytes[..first]).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(header_of(&response, "upload-offset"), first.to_string());
    let bucket = moto.bucket().await;
    assert_eq!(
        bucket.objects,
        BTreeMap::from([(format!("{id}.tail"), first as u64)])
    );
    assert_eq!(bucket.uploads, Vec::<String>::new());

    // A PATCH that crosses a part's end and then loses its connection: the part and the bytes
    // after it are kept; HEAD counts them.
    let sent = 7_000_000;
    patch_and_drop(app, &alice, &path, first, &bytes[first..], sent).await;
    let resume_at = first + sent;
    offset_reaches(app, &alice, &path, resume_at).await;
    let bucket = moto.bucket().await;
    assert_eq!(
        bucket.objects,
        BTreeMap::from([(format!("{id}.tail"), (resume_at - PART) as u64)]),
        "no object before the upload is complete"
    );
    assert_eq!(bucket.uploads, vec![id.clone()]);
    assert_eq!(download(app, &alice, &path).await.0, StatusCode::NOT_FOUND);

    // The rest in one chunk larger than a part.
    let response = patch(app, &alice, &path, resume_at, &bytes[resume_at..]).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        header_of(&response, "upload-offset"),
        bytes.len().to_string()
    );
    let bucket = moto.bucket().await;
    assert_eq!(
        bucket,
        Bucket {
            objects: BTreeMap::from([(id.clone(), bytes.len() as u64)]),
            uploads: vec![],
        },
        "the object whole, its tail and multipart upload gone"
    );

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
    assert_eq!(
        sha256(&response.bytes().await.expect("body")),
        sha256(&bytes)
    );

    // A range across two parts, and one outside the object.
    let (start, end) = (PART - 1000, PART + 999);
    let response = (app.http.get(app.url(&path)))
        .bearer_auth(&alice.token)
        .header(header::RANGE, format!("bytes={start}-{end}"))
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        header_of(&response, "content-range"),
        format!("bytes {start}-{end}/{}", bytes.len())
    );
    assert_eq!(header_of(&response, "content-length"), "2000");
    assert_eq!(
        &response.bytes().await.expect("body")[..],
        &bytes[start..=end]
    );
    let response = (app.http.get(app.url(&path)))
        .bearer_auth(&alice.token)
        .header(header::RANGE, format!("bytes={}-", bytes.len()))
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), StatusCode::RANGE_NOT_SATISFIABLE);

    let stats: Value = (app.http.get(app.url("/api/admin/stats")))
        .bearer_auth(super::admin::ADMIN_TOKEN)
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("JSON");
    assert_eq!(stats["database"]["attachment_bytes"], json!(bytes.len()));
    s.assert_no_files();
}

/// Alice's attachments in every state: finished (small: one PUT), finished in parts, and
/// unfinished with a part and a tail stored. Their paths.
async fn attachments_in_every_state(app: &TestApp, alice: &TestUser) -> Vec<String> {
    let small = upload(app, alice, &random_bytes(1000)).await;
    let large = upload(app, alice, &random_bytes(PART + 1000)).await;
    let unfinished = create(app, alice, 2 * PART).await;
    let response = patch(app, alice, &unfinished, 0, &random_bytes(PART + 1000)).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    vec![small, large, unfinished]
}

/// The objects and multipart uploads of these attachments: `<id>` each finished one, an
/// upload and a tail each unfinished one.
fn stored(paths: &[String]) -> Bucket {
    let ids: Vec<String> = paths.iter().map(|p| id_of(p)).collect();
    Bucket {
        objects: BTreeMap::from([
            (ids[0].clone(), 1000),
            (ids[1].clone(), PART as u64 + 1000),
            (format!("{}.tail", ids[2]), 1000),
        ]),
        uploads: vec![ids[2].clone()],
    }
}

fn empty() -> Bucket {
    Bucket {
        objects: BTreeMap::new(),
        uploads: vec![],
    }
}

async fn a_deleted_upload_leaves_nothing_in_the_bucket(engine: Engine) {
    let mut moto = Moto::start().await;
    let s = spawn(engine, &moto, &[]).await;
    let app = &s.app;
    let alice = app.register("alice").await;
    let paths = attachments_in_every_state(app, &alice).await;
    assert_eq!(moto.bucket().await, stored(&paths));

    for path in &paths {
        let response = tus(app, Method::DELETE, path, &alice)
            .send()
            .await
            .expect("DELETE");
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        assert_eq!(download(app, &alice, path).await.0, StatusCode::NOT_FOUND);
    }
    assert_eq!(moto.bucket().await, empty());
    s.assert_no_files();
}

async fn expired_uploads_are_swept_from_the_bucket(engine: Engine) {
    let mut moto = Moto::start().await;
    let s = spawn(engine, &moto, &[("ATTACHMENT_TTL", "3600")]).await;
    let app = &s.app;
    let alice = app.register("alice").await;
    let paths = attachments_in_every_state(app, &alice).await;

    let now = chrono::Utc::now();
    let swept = kisse_backend::domain::retention::sweep(&app.state, now)
        .await
        .expect("sweep");
    assert_eq!(swept.attachments, 0, "nothing expired yet");
    assert_eq!(moto.bucket().await, stored(&paths));

    let later = now + chrono::Duration::hours(2);
    let swept = kisse_backend::domain::retention::sweep(&app.state, later)
        .await
        .expect("sweep");
    assert_eq!(swept.attachments, 3);
    assert_eq!(moto.bucket().await, empty());
}

async fn deleting_the_account_deletes_its_objects(engine: Engine) {
    let mut moto = Moto::start().await;
    let s = spawn(engine, &moto, &[]).await;
    let app = &s.app;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    attachments_in_every_state(app, &alice).await;
    let kept = upload(app, &bob, &random_bytes(100)).await;

    app.delete_account(&alice).await;
    assert_eq!(
        moto.bucket().await,
        Bucket {
            objects: BTreeMap::from([(id_of(&kept), 100)]),
            uploads: vec![],
        },
        "only bob's object is left"
    );
}

async fn tuspy_uploads_to_s3_in_chunks_smaller_than_a_part(engine: Engine) {
    let mut moto = Moto::start().await;
    let s = spawn(engine, &moto, &[]).await;
    let app = &s.app;
    let alice = app.register("alice").await;
    let bytes = random_bytes(PART + 1_000_123);
    let path = tuspy_upload(app, &alice, &bytes, 2 * 1024 * 1024).await;
    let (status, got) = download(app, &alice, &path).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sha256(&got), sha256(&bytes));
    let bucket = moto.bucket().await;
    assert_eq!(
        bucket,
        Bucket {
            objects: BTreeMap::from([(id_of(&path), bytes.len() as u64)]),
            uploads: vec![],
        }
    );
    s.assert_no_files();
}

/// Two nodes (on one PostgreSQL and one Redis) with a directory each and one bucket: an upload
/// begun on one node is resumed on the other, and each serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_without_a_shared_disk_serve_the_same_attachments() {
    if !Engine::Postgres.available() {
        eprintln!("TEST_DATABASE_URL is not set: two-node S3 test (PostgreSQL only) not run");
        return;
    }
    let moto = Moto::start().await;
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!("kt-{}", uuid::Uuid::new_v4().simple());
    let a = spawn(
        Engine::Postgres,
        &moto,
        &[
            ("REDIS_URL", redis.as_str()),
            ("REDIS_PREFIX", prefix.as_str()),
        ],
    )
    .await;
    let b_dir = scratch_dir();
    let b_dir_setting = b_dir.display().to_string();
    let b = a
        .app
        .spawn_node(&[("ATTACHMENT_DIR", &b_dir_setting)])
        .await;
    let alice = a.app.register("alice").await;

    let bytes = random_bytes(PART + 300_000);
    let path = create(&a.app, &alice, bytes.len()).await;
    let half = bytes.len() / 2;
    let response = patch(&a.app, &alice, &path, 0, &bytes[..half]).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        offset(&b, &alice, &path).await,
        (StatusCode::OK, Some(half as u64))
    );
    let response = patch(&b, &alice, &path, half, &bytes[half..]).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);

    for node in [&a.app, &b] {
        let (status, got) = download(node, &alice, &path).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(sha256(&got), sha256(&bytes));
    }
    a.assert_no_files();
    assert!(!b_dir.exists(), "node B wrote to its disk");
    drop(b);
}
