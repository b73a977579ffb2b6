//! An HTTP service on axum and tokio, with a custody `Database` behind it.
//!
//! - `POST /events` with `{"key": "...", "body": "..."}` inserts one row and
//!   answers `201 {"id": N, "key": "..."}` only once the row is committed
//!   (group-committed with the writes that arrive with it). A key already
//!   stored is `409`, a body that is not such an object `400`/`422`.
//! - `GET /events/count` answers `{"count": N}`.
//! - `GET /stats` answers the runtime's counters, one object per manager,
//!   and the database's own (commits, committed and failed writes).
//!
//! The handlers await the database (`write_async`, `call_async`): a request
//! waiting for its commit holds no thread, so two executor workers serve
//! hundreds of requests in flight, and their writes share commits.
//!
//! SIGTERM or Ctrl-C stops the service gracefully: axum stops accepting
//! connections and finishes the requests in flight (each one's write
//! committed and answered), then the custody runtime is shut down
//! (`shutdown_async`, awaited), draining whatever it still holds, and the
//! process exits 0. The service installs
//! its own signal handlers with `tokio::signal`; custody installs none.
//!
//! Run: `cargo run --example service -- --db events.db --addr 127.0.0.1:8080`
//! (the bound address is printed on stdout: `--addr 127.0.0.1:0` picks a free
//! port). With no arguments (or `--demo`) it serves a temporary file on a free
//! loopback port, drives itself with a few hundred concurrent requests over
//! loopback, shuts down as on a signal, checks that the file holds exactly
//! the acknowledged events, and exits (non-zero if it does not).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use custody::resources::rusqlite::{self, Connection, ErrorCode};
use custody::resources::{Database, DatabaseError, DatabaseHandle};
use custody::{Runtime, Stats};
use serde_json::{Value, json};
use tokio::sync::oneshot;

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    body TEXT NOT NULL
)";

const INSERT: &str = "INSERT INTO events (key, body) VALUES (?1, ?2) RETURNING id";

/// What every request handler shares: the database's handle and the runtime
/// (for its stats).
#[derive(Clone)]
struct App {
    db: DatabaseHandle,
    rt: Arc<Runtime>,
}

/// A request's failure, as a status and a JSON `{"error": "..."}`.
struct Failure(StatusCode, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<DatabaseError> for Failure {
    fn from(error: DatabaseError) -> Failure {
        let status = match &error {
            DatabaseError::Sqlite(rusqlite::Error::SqliteFailure(e, _))
                if e.code == ErrorCode::ConstraintViolation =>
            {
                StatusCode::CONFLICT
            }
            // The manager is stopping or stopped: the service is going away.
            DatabaseError::Runtime(_) | DatabaseError::Stopped { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Failure(status, error.to_string())
    }
}

/// `POST /events`: one row, answered once committed.
async fn create_event(
    State(app): State<App>,
    Json(event): Json<Value>,
) -> Result<impl IntoResponse, Failure> {
    let text = |field: &str| event.get(field).and_then(Value::as_str).map(str::to_owned);
    let Some(key) = text("key") else {
        return Err(Failure(
            StatusCode::BAD_REQUEST,
            "expected {\"key\": string, \"body\": string}".to_owned(),
        ));
    };
    let body = text("body").unwrap_or_default();
    let row_key = key.clone();
    // Awaited in the handler's task: no thread waits for the commit.
    let id = app
        .db
        .write_async(move |conn| {
            conn.prepare_cached(INSERT)?
                .query_row((row_key, body), |row| row.get::<_, i64>(0))
        })
        .await?;
    Ok((StatusCode::CREATED, Json(json!({ "id": id, "key": key }))))
}

/// `GET /events/count`.
async fn count_events(State(app): State<App>) -> Result<Json<Value>, Failure> {
    let count = app
        .db
        .call_async(|conn| {
            conn.query_row("SELECT count(*) FROM events", [], |r| r.get::<_, i64>(0))
        })
        .await?
        .map_err(DatabaseError::from)?;
    Ok(Json(json!({ "count": count })))
}

/// `GET /stats`: the runtime's counters and the database's.
async fn stats(State(app): State<App>) -> Result<Json<Value>, Failure> {
    let database = app.db.stats_async().await?;
    Ok(Json(json!({
        "managers": managers_json(&app.rt.stats()),
        "database": {
            "commits": database.commits,
            "committed_writes": database.committed_writes,
            "failed_writes": database.failed_writes,
            "failed_told_writes": database.failed_told_writes,
            "panicked_writes": database.panicked_writes,
            "failed_commits": database.failed_commits,
        },
    })))
}

fn managers_json(stats: &Stats) -> Value {
    stats
        .managers
        .iter()
        .map(|m| {
            json!({
                "name": m.name,
                "backend": m.backend.name(),
                "daemon": m.daemon,
                "state": m.state.to_string(),
                "handled": m.handled,
                "panicked": m.panicked,
                "restarts": m.restarts,
                "queued": m.queued,
                "unfinished": m.unfinished,
                "unhandled": m.unhandled,
            })
        })
        .collect()
}

fn router(app: App) -> Router {
    Router::new()
        .route("/events", post(create_event))
        .route("/events/count", get(count_events))
        .route("/stats", get(stats))
        .with_state(app)
}

/// Resolves when the demo's driver is done (sent, or dropped if it failed);
/// never without a demo.
async fn demo_finished(demo_done: Option<oneshot::Receiver<()>>) {
    match demo_done {
        Some(done) => {
            let _ = done.await;
        }
        None => std::future::pending().await,
    }
}

/// Resolves on the first SIGTERM or SIGINT (Ctrl-C), or when the demo is
/// done. The handlers are installed before this returns, so a signal sent
/// as soon as the address is printed is caught, not fatal.
#[cfg(unix)]
fn shutdown_signal(
    demo_done: Option<oneshot::Receiver<()>>,
) -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let demo_done = demo_finished(demo_done);
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => eprintln!("service: SIGTERM, shutting down"),
            _ = interrupt.recv() => eprintln!("service: SIGINT, shutting down"),
            _ = demo_done => eprintln!("service: demo done, shutting down"),
        }
    })
}

#[cfg(not(unix))]
fn shutdown_signal(
    demo_done: Option<oneshot::Receiver<()>>,
) -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    let demo_done = demo_finished(demo_done);
    Ok(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => eprintln!("service: Ctrl-C, shutting down"),
            _ = demo_done => eprintln!("service: demo done, shutting down"),
        }
    })
}

struct Options {
    db: PathBuf,
    addr: SocketAddr,
    demo: bool,
}

const USAGE: &str = "\
Usage: cargo run --example service -- [--db PATH] [--addr ADDR] [--demo]

  --db PATH    the SQLite file (created if missing)
  --addr ADDR  the address to listen on (default 127.0.0.1:8080; port 0
               picks a free one); the bound address is printed on stdout
  --demo       drive the service with requests of its own, then stop
               (the default when run with no arguments, on a temporary file
               and a free loopback port)";

fn parse(args: Vec<String>) -> Result<Option<Options>, String> {
    let demo_default = args.is_empty();
    let mut db = None;
    let mut addr = None;
    let mut demo = demo_default;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--db" => db = Some(PathBuf::from(args.next().ok_or("--db needs a path")?)),
            "--addr" => {
                let text = args.next().ok_or("--addr needs an address")?;
                addr = Some(text.parse().map_err(|e| format!("--addr {text:?}: {e}"))?);
            }
            "--demo" => demo = true,
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let db = match db {
        Some(db) => db,
        None if demo => {
            std::env::temp_dir().join(format!("custody-service-demo-{}.db", std::process::id()))
        }
        None => return Err("--db PATH is needed (or --demo)".to_owned()),
    };
    let default_port = if demo { 0 } else { 8080 };
    let addr = addr.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], default_port)));
    Ok(Some(Options { db, addr, demo }))
}

fn remove_db(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let _ = std::fs::remove_file(name);
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let options = match parse(std::env::args().skip(1).collect()) {
        Ok(Some(options)) => options,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("service: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if options.demo {
        remove_db(&options.db);
    }
    let outcome = serve(&options).await;
    if options.demo {
        remove_db(&options.db);
    }
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("service: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(options: &Options) -> Result<(), String> {
    let rt = Arc::new(Runtime::new());
    let db = Database::builder(&options.db)
        .init_sql(SCHEMA)
        .spawn(&rt, "events")
        .map_err(|e| format!("opening {}: {e}", options.db.display()))?;
    let app = App {
        db: db.clone(),
        rt: Arc::clone(&rt),
    };
    let (demo_done, demo_finished) = oneshot::channel();
    let demo_finished = options.demo.then_some(demo_finished);
    let shutdown = shutdown_signal(demo_finished).map_err(|e| format!("signals: {e}"))?;
    let listener = tokio::net::TcpListener::bind(options.addr)
        .await
        .map_err(|e| format!("binding {}: {e}", options.addr))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("the bound address: {e}"))?;
    // The line a test (or a person) reads to find the service.
    println!("listening on http://{addr}");

    let demo = options.demo.then(|| {
        tokio::spawn(async move {
            let acknowledged = demo::drive(addr).await;
            let _ = demo_done.send(());
            acknowledged
        })
    });

    axum::serve(listener, router(app))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| format!("serving: {e}"))?;

    // Every request in flight was answered; now drain the runtime, awaited
    // (dropping the last `Runtime` in a task would block a worker until the
    // managers stopped).
    let report = rt.shutdown_async().await;
    if !report.is_complete() {
        return Err(format!("the runtime's shutdown left work: {report:?}"));
    }
    eprintln!("service: stopped\n{}", rt.stats());

    if let Some(demo) = demo {
        let acknowledged = demo
            .await
            .map_err(|e| format!("the demo's driver failed: {e}"))??;
        let conn = Connection::open(&options.db).map_err(|e| format!("reopening: {e}"))?;
        let rows: u64 = conn
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .map_err(|e| format!("counting: {e}"))?;
        if rows != acknowledged {
            return Err(format!(
                "{acknowledged} events acknowledged, {rows} rows in the file"
            ));
        }
        println!("demo: {acknowledged} events acknowledged, {rows} rows in the file");
    }
    Ok(())
}

/// The demo's client: concurrent requests over loopback with hyper's client.
mod demo {
    use std::net::SocketAddr;

    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    use hyper::{Method, Request, StatusCode};
    use hyper_util::client::legacy::Client;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::TokioExecutor;
    use serde_json::{Value, json};

    const TASKS: u64 = 8;
    const EVENTS_PER_TASK: u64 = 25;

    type HttpClient = Client<HttpConnector, Full<Bytes>>;

    async fn request(
        client: &HttpClient,
        method: Method,
        uri: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value), String> {
        let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let response = client
            .request(request)
            .await
            .map_err(|e| format!("{uri}: {e}"))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{uri}: {e}"))?
            .to_bytes();
        let value = serde_json::from_slice(&bytes).map_err(|e| format!("{uri}: {e}"))?;
        Ok((status, value))
    }

    /// Posts `TASKS * EVENTS_PER_TASK` events from `TASKS` concurrent tasks,
    /// then a duplicate key (which must be refused), reads the count and
    /// the stats, and returns the number of events acknowledged.
    pub(crate) async fn drive(addr: SocketAddr) -> Result<u64, String> {
        let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
        let events = format!("http://{addr}/events");
        let tasks: Vec<_> = (0..TASKS)
            .map(|task| {
                let (client, events) = (client.clone(), events.clone());
                tokio::spawn(async move {
                    for n in 0..EVENTS_PER_TASK {
                        let event = json!({ "key": format!("demo-{task}-{n}"), "body": "hello" });
                        let (status, answer) =
                            request(&client, Method::POST, &events, Some(event)).await?;
                        if status != StatusCode::CREATED || answer["id"].as_i64().is_none() {
                            return Err(format!("POST /events: {status} {answer}"));
                        }
                    }
                    Ok::<u64, String>(EVENTS_PER_TASK)
                })
            })
            .collect();
        let mut acknowledged = 0;
        for task in tasks {
            acknowledged += task.await.map_err(|e| e.to_string())??;
        }
        let duplicate = json!({ "key": "demo-0-0", "body": "again" });
        let (status, _) = request(&client, Method::POST, &events, Some(duplicate)).await?;
        if status != StatusCode::CONFLICT {
            return Err(format!("a duplicate key got {status}, not 409"));
        }
        let (_, count) = request(
            &client,
            Method::GET,
            &format!("http://{addr}/events/count"),
            None,
        )
        .await?;
        if count["count"].as_u64() != Some(acknowledged) {
            return Err(format!(
                "GET /events/count: {count}, {acknowledged} acknowledged"
            ));
        }
        let (_, stats) =
            request(&client, Method::GET, &format!("http://{addr}/stats"), None).await?;
        println!("demo: GET /stats: {stats}");
        Ok(acknowledged)
    }
}
