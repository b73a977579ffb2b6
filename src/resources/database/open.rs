//! Opening a database: the builder, its settings, and the authorizer that
//! keeps write closures from ending the batch.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rusqlite::Connection;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};

use super::group_commit::{GroupCommit, SAVEPOINT};
use super::{Database, DatabaseHandle, OpenError};
use crate::Runtime;

/// The default for [`DatabaseBuilder::max_batch`].
pub const DEFAULT_MAX_BATCH_WRITES: usize = 512;

/// The `PRAGMA synchronous` level of a [`Database`] connection: how hard
/// SQLite works to make a commit survive a power cut.
///
/// # Examples
///
/// ```
/// use custody::resources::{Database, Synchronous};
///
/// assert_eq!(Synchronous::default(), Synchronous::Full);
/// let db = Database::in_memory().synchronous(Synchronous::Normal).open()?;
/// # drop(db);
/// # Ok::<(), custody::resources::DatabaseError>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Synchronous {
    /// `FULL`: every commit is synced to disk before it is acknowledged.
    #[default]
    Full,
    /// `NORMAL`: in WAL mode, a commit survives a crash of the process but
    /// the last ones may be lost in a power cut.
    Normal,
    /// `OFF`: no syncing at all.
    Off,
}

impl Synchronous {
    /// The pragma's keyword: `"FULL"`, `"NORMAL"` or `"OFF"`.
    pub fn keyword(self) -> &'static str {
        match self {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
            Synchronous::Off => "OFF",
        }
    }

    /// The number `PRAGMA synchronous` reads back: 2, 1 or 0.
    pub fn level(self) -> i64 {
        match self {
            Synchronous::Full => 2,
            Synchronous::Normal => 1,
            Synchronous::Off => 0,
        }
    }
}

#[derive(Clone, Debug)]
pub(super) enum Target {
    File(PathBuf),
    Memory,
}

/// Configures and opens a [`Database`]; made by [`Database::builder`] or
/// [`Database::in_memory`].
///
/// # Examples
///
/// ```
/// use custody::Runtime;
/// use custody::resources::{Database, Synchronous};
///
/// let path = std::env::temp_dir().join(format!("custody-doc-builder-{}.db", std::process::id()));
/// let rt = Runtime::new();
/// let db = Database::builder(&path)
///     .synchronous(Synchronous::Normal)
///     .max_batch(128)
///     .init_sql("CREATE TABLE IF NOT EXISTS events (name TEXT NOT NULL)")
///     .spawn(&rt, "events")?;
/// db.execute("INSERT INTO events VALUES (?1)", vec!["started".to_owned().into()])?;
/// let mode: String = db.call(|c| c.query_row("PRAGMA journal_mode", [], |r| r.get(0)))??;
/// assert_eq!(mode, "wal");
/// rt.shutdown();
/// for suffix in ["", "-wal", "-shm"] {
///     let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
#[must_use = "a DatabaseBuilder does nothing until `open` or `spawn`"]
pub struct DatabaseBuilder {
    target: Target,
    synchronous: Synchronous,
    max_batch: usize,
    init_sql: Option<String>,
}

impl DatabaseBuilder {
    pub(super) fn new(target: Target) -> DatabaseBuilder {
        DatabaseBuilder {
            target,
            synchronous: Synchronous::default(),
            max_batch: DEFAULT_MAX_BATCH_WRITES,
            init_sql: None,
        }
    }

    /// The `PRAGMA synchronous` level; [`Synchronous::Full`] by default.
    pub fn synchronous(mut self, level: Synchronous) -> Self {
        self.synchronous = level;
        self
    }

    /// The most write messages in one transaction: a batch that reaches it is
    /// committed at once, even if more writes are queued. 0 is taken as 1.
    /// [`DEFAULT_MAX_BATCH_WRITES`] (512) by default.
    pub fn max_batch(mut self, writes: usize) -> Self {
        self.max_batch = writes.max(1);
        self
    }

    /// SQL run once right after opening (several statements are fine), for
    /// example `CREATE TABLE IF NOT EXISTS ...`.
    pub fn init_sql(mut self, sql: impl Into<String>) -> Self {
        self.init_sql = Some(sql.into());
        self
    }

    /// Opens the connection on the calling thread, so that a bad path or init
    /// SQL fails here; the returned manager is then spawned.
    ///
    /// # Errors
    ///
    /// [`OpenError::Sqlite`] if opening, a pragma or the init SQL fails,
    /// [`OpenError::NotWal`] if a file database refuses WAL mode,
    /// [`OpenError::InitLeftTransaction`] if the init SQL left a
    /// transaction open.
    pub fn open(self) -> Result<Database, OpenError> {
        let conn = match &self.target {
            Target::File(path) => {
                let conn = Connection::open(path)?;
                let mode: String =
                    conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
                if !mode.eq_ignore_ascii_case("wal") {
                    return Err(OpenError::NotWal { mode });
                }
                conn
            }
            Target::Memory => Connection::open_in_memory()?,
        };
        conn.pragma_update(None, "synchronous", self.synchronous.keyword())?;
        if let Some(sql) = &self.init_sql {
            conn.execute_batch(sql)?;
            if !conn.is_autocommit() {
                conn.execute_batch("ROLLBACK")?;
                return Err(OpenError::InitLeftTransaction);
            }
        }
        let restricted = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&restricted);
        conn.authorizer(Some(move |ctx: AuthContext<'_>| {
            if !flag.load(Ordering::Relaxed) {
                return Authorization::Allow;
            }
            match ctx.action {
                AuthAction::Transaction { .. } => Authorization::Deny,
                AuthAction::Savepoint { savepoint_name, .. }
                    if savepoint_name.eq_ignore_ascii_case(SAVEPOINT) =>
                {
                    Authorization::Deny
                }
                _ => Authorization::Allow,
            }
        }));
        Ok(Database::from_engine(GroupCommit::new(
            conn,
            self.max_batch,
            restricted,
        )))
    }

    /// Opens the database and spawns its manager on `rt` with the runtime's
    /// defaults.
    ///
    /// # Errors
    ///
    /// As [`open`](DatabaseBuilder::open), plus [`OpenError::Spawn`].
    pub fn spawn(self, rt: &Runtime, name: impl Into<String>) -> Result<DatabaseHandle, OpenError> {
        Ok(self.open()?.spawn(rt, name)?)
    }
}
