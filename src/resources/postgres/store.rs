//! The PostgreSQL connection as the group-commit engine's store: the
//! session (client, statement cache, transaction state, claims), the
//! fencing check, and `PgConn`, the connection as write closures see it.

use std::any::Any;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use ::postgres::types::ToSql;
use ::postgres::{Client, Config, NoTls, Row, SimpleQueryMessage, Statement};

use super::PgStateError;
use crate::resources::group_commit::{Outcome, Store};

/// The tables the fencing and the exactly-once effects live in, created at
/// open if missing (under an advisory lock, so that owners opening at once
/// do not race on the catalog).
pub(super) const SCHEMA: &str = "\
BEGIN;
SELECT pg_advisory_xact_lock(7420133016841501);
CREATE TABLE IF NOT EXISTS custody_epochs (
    partition  text PRIMARY KEY,
    epoch      bigint NOT NULL,
    owner      text NOT NULL,
    claimed_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS custody_applied (
    partition  text NOT NULL,
    message_id text NOT NULL,
    epoch      bigint NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (partition, message_id)
);
COMMIT;";

/// Bumps a partition's epoch (or creates it at 1) and names the owner; it
/// waits for every batch of the previous owner that holds the partition's
/// row `FOR SHARE`.
const CLAIM: &str = "\
INSERT INTO custody_epochs (partition, epoch, owner) VALUES ($1, 1, $2)
ON CONFLICT (partition) DO UPDATE
    SET epoch = custody_epochs.epoch + 1, owner = EXCLUDED.owner, claimed_at = now()
RETURNING epoch";

/// The fencing check, the first time a batch touches a partition: the row
/// stays share-locked until the batch's transaction ends, so a claim
/// waits for the commit.
const CHECK_EPOCH: &str = "SELECT epoch FROM custody_epochs WHERE partition = $1 FOR SHARE";

/// Records a message id, with the epoch it was applied under.
const RECORD_APPLIED: &str = "\
INSERT INTO custody_applied (partition, message_id, epoch) VALUES ($1, $2, $3)
ON CONFLICT DO NOTHING";

/// A write message's work, type-erased.
pub(crate) trait PgWriteOp: Any + Send {
    /// The partition whose claim the write needs, if it is fenced.
    fn partition(&self) -> Option<&str>;
    /// Runs the write (in its savepoint, or bare), keeping its result.
    fn run(&mut self, session: &mut Session) -> Result<(), PgStateError>;
    /// Whether someone waits for the answer.
    fn is_asked(&self) -> bool;
    /// What to call the write in a log line.
    fn describe(&self) -> &str;
    /// The batch committed: answer `Ok`.
    fn succeed(self: Box<Self>);
    /// The write, or its batch, failed: answer the error.
    fn fail(self: Box<Self>, error: PgStateError);
}

impl Outcome<PgStateError> for dyn PgWriteOp {
    fn is_asked(&self) -> bool {
        PgWriteOp::is_asked(self)
    }
    fn wants_outcome(&self) -> bool {
        PgWriteOp::is_asked(self)
    }
    fn describe(&self) -> &str {
        PgWriteOp::describe(self)
    }
    fn succeed(self: Box<Self>) {
        PgWriteOp::succeed(self);
    }
    fn fail(self: Box<Self>, error: PgStateError) {
        PgWriteOp::fail(self, error);
    }
}

/// Why a COMMIT did not succeed.
#[derive(Clone)]
pub(crate) enum CommitFailure {
    /// The server answered with an error: rolled back.
    Refused(Arc<::postgres::Error>),
    /// The connection was lost with the COMMIT in flight.
    Unknown(Arc<::postgres::Error>),
    /// The transaction had already failed; no COMMIT was sent.
    Failed,
}

impl fmt::Display for CommitFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommitFailure::Refused(error) => write!(f, "the server refused the commit: {error}"),
            CommitFailure::Unknown(error) => {
                write!(f, "the connection was lost during the commit: {error}")
            }
            CommitFailure::Failed => f.write_str("the transaction had failed"),
        }
    }
}

/// The manager's connection and everything known about its state.
pub(crate) struct Session {
    client: Client,
    config: Config,
    /// The session settings, run again on every new connection.
    setup: String,
    owner: String,
    /// `lock_timeout` of a claim, in milliseconds (0: none).
    claim_timeout_ms: i32,
    /// Statements prepared on this connection, by SQL text.
    statements: HashMap<String, Statement>,
    /// A transaction is open (`BEGIN` succeeded, no COMMIT or ROLLBACK yet).
    tx_open: bool,
    /// A statement failed outside any savepoint: the transaction can only
    /// roll back (PostgreSQL would answer a COMMIT with a silent ROLLBACK).
    tx_failed: bool,
    /// A write's savepoint is open.
    sp_open: bool,
    /// A statement failed inside the open savepoint.
    sp_failed: bool,
    /// Savepoint control owed before the next statement (the last write's
    /// RELEASE, the next write's SAVEPOINT): it travels with that statement
    /// when it can (a message id's INSERT), else just before it; a COMMIT
    /// or ROLLBACK makes it moot.
    pending: String,
    /// Statements that failed since the session opened (to catch a write
    /// that swallowed an error).
    statement_errors: u64,
    /// The partitions this owner claimed, and the epoch of each claim.
    claims: BTreeMap<String, i64>,
    /// The partitions this owner was fenced out of since its last claim of
    /// each: (held, current).
    fenced: HashMap<String, (i64, Option<i64>)>,
    /// The partitions checked (and share-locked) in the open transaction.
    checked: HashSet<String>,
    pub(super) stats: SessionStats,
}

/// The session's own counters.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct SessionStats {
    pub(super) duplicates: u64,
    pub(super) fenced_writes: u64,
    pub(super) claims: u64,
    pub(super) reconnects: u64,
}

impl Session {
    /// Connects and sets the session up.
    pub(super) fn connect(
        config: Config,
        setup: String,
        owner: String,
        claim_timeout_ms: i32,
    ) -> Result<Session, super::PgOpenError> {
        let mut client = config.connect(NoTls).map_err(super::PgOpenError::Connect)?;
        client
            .batch_execute(&setup)
            .map_err(super::PgOpenError::Setup)?;
        client
            .batch_execute(SCHEMA)
            .map_err(super::PgOpenError::Setup)?;
        Ok(Session {
            client,
            config,
            setup,
            owner,
            claim_timeout_ms,
            statements: HashMap::new(),
            tx_open: false,
            tx_failed: false,
            sp_open: false,
            sp_failed: false,
            pending: String::new(),
            statement_errors: 0,
            claims: BTreeMap::new(),
            fenced: HashMap::new(),
            checked: HashSet::new(),
            stats: SessionStats::default(),
        })
    }

    /// Replaces a lost connection (between transactions only).
    fn reconnect_if_closed(&mut self) -> Result<(), PgStateError> {
        if !self.client.is_closed() {
            return Ok(());
        }
        tracing::warn!("the PostgreSQL connection was lost; connecting again");
        let mut client = self.config.connect(NoTls)?;
        client.batch_execute(&self.setup)?;
        self.client = client;
        self.statements.clear();
        self.stats.reconnects += 1;
        Ok(())
    }

    /// Notes a statement's failure: it fails the savepoint, or else the
    /// transaction.
    fn note<T>(&mut self, result: Result<T, ::postgres::Error>) -> Result<T, PgStateError> {
        result.map_err(|error| {
            self.statement_errors += 1;
            if self.sp_open {
                self.sp_failed = true;
            } else if self.tx_open {
                self.tx_failed = true;
            }
            PgStateError::Postgres(error)
        })
    }

    /// Runs SQL of the manager's own (transaction control).
    fn control(&mut self, sql: &str) -> Result<(), PgStateError> {
        let result = self.client.batch_execute(sql);
        self.note(result)
    }

    fn statement(&mut self, sql: &str) -> Result<Statement, PgStateError> {
        self.flush_pending()?;
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let prepared = self.client.prepare(sql);
        let statement = self.note(prepared)?;
        self.statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    fn execute(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, PgStateError> {
        let statement = self.statement(sql)?;
        let result = self.client.execute(&statement, params);
        self.note(result)
    }

    fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, PgStateError> {
        let statement = self.statement(sql)?;
        let result = self.client.query(&statement, params);
        self.note(result)
    }

    fn query_opt(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, PgStateError> {
        let statement = self.statement(sql)?;
        let result = self.client.query_opt(&statement, params);
        self.note(result)
    }

    /// Sends the savepoint control still owed.
    fn flush_pending(&mut self) -> Result<(), PgStateError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        self.control(&pending)
    }

    /// Forgets the transaction's state once it ended.
    fn ended(&mut self) {
        self.tx_open = false;
        self.tx_failed = false;
        self.sp_open = false;
        self.sp_failed = false;
        self.pending.clear();
        self.checked.clear();
    }

    /// Claims `partition`: bumps its epoch in a transaction of its own
    /// (which waits for the previous owner's batch in flight, if any) and
    /// remembers it. Outside any batch.
    pub(super) fn claim(&mut self, partition: &str) -> Result<i64, PgStateError> {
        self.reconnect_if_closed()?;
        let owner = self.owner.clone();
        // In a transaction of its own, for a lock timeout of its own.
        let begin = format!("BEGIN; SET LOCAL lock_timeout = {}", self.claim_timeout_ms);
        let claimed = self
            .control(&begin)
            .and_then(|()| self.query_opt(CLAIM, &[&partition, &owner]))
            .and_then(|row| {
                self.control("COMMIT")?;
                Ok(row)
            });
        let row = match claimed {
            Ok(row) => row,
            Err(error) => {
                if !self.client.is_closed() {
                    let _ = self.client.batch_execute("ROLLBACK");
                }
                return Err(error);
            }
        };
        let epoch: i64 = row.map_or(0, |row| row.get(0));
        self.claims.insert(partition.to_owned(), epoch);
        self.fenced.remove(partition);
        self.stats.claims += 1;
        tracing::info!(partition, epoch, owner, "partition claimed");
        Ok(epoch)
    }

    /// Forgets the claim on `partition` (its writes then fail
    /// `NotClaimed`).
    pub(super) fn resign(&mut self, partition: &str) -> bool {
        self.fenced.remove(partition);
        self.claims.remove(partition).is_some()
    }

    /// The partitions claimed, with their epochs.
    pub(super) fn claims(&self) -> BTreeMap<String, i64> {
        self.claims.clone()
    }

    /// The fencing check of `partition` in the open transaction: its epoch
    /// is still the one claimed (and now share-locked until the end of the
    /// transaction). A changed epoch fences the partition: this owner
    /// steps down for it. It runs outside any write's savepoint (the
    /// engine's `prepare`, with the savepoint control owed sent first): a
    /// row lock taken inside a savepoint that is rolled back is released,
    /// and would let a claim through before this batch commits.
    fn check_partition(&mut self, partition: &str) -> Result<i64, PgStateError> {
        if let Some(&(held, current)) = self.fenced.get(partition) {
            self.stats.fenced_writes += 1;
            return Err(PgStateError::Fenced {
                partition: partition.to_owned(),
                held,
                current,
            });
        }
        let Some(&held) = self.claims.get(partition) else {
            return Err(PgStateError::NotClaimed {
                partition: partition.to_owned(),
            });
        };
        if self.checked.contains(partition) {
            return Ok(held);
        }
        let row = self.query_opt(CHECK_EPOCH, &[&partition])?;
        let current: Option<i64> = row.map(|row| row.get(0));
        if current == Some(held) {
            self.checked.insert(partition.to_owned());
            return Ok(held);
        }
        tracing::warn!(
            partition,
            held,
            ?current,
            "another owner claimed the partition: this owner steps down for it"
        );
        self.claims.remove(partition);
        self.fenced.insert(partition.to_owned(), (held, current));
        self.stats.fenced_writes += 1;
        Err(PgStateError::Fenced {
            partition: partition.to_owned(),
            held,
            current,
        })
    }

    /// The epoch claimed for `partition` (checked in this transaction).
    pub(super) fn epoch_of(&self, partition: &str) -> Option<i64> {
        self.claims.get(partition).copied()
    }

    /// Records `message_id` as applied in `partition`; `false` if it was
    /// applied before (or earlier in this batch).
    pub(super) fn record_applied(
        &mut self,
        partition: &str,
        message_id: &str,
    ) -> Result<bool, PgStateError> {
        let epoch = self.epoch_of(partition).unwrap_or(0);
        let recorded = match (literal(partition), literal(message_id)) {
            // The savepoint control owed goes out with the INSERT, in one
            // round trip (the simple protocol: literals, no parameters).
            (Some(partition), Some(message_id)) if !self.pending.is_empty() => {
                let sql = format!(
                    "{}INSERT INTO custody_applied (partition, message_id, epoch) \
                     VALUES ({partition}, {message_id}, {epoch}) ON CONFLICT DO NOTHING",
                    std::mem::take(&mut self.pending)
                );
                let result = self.client.simple_query(&sql);
                let messages = self.note(result)?;
                messages
                    .iter()
                    .rev()
                    .find_map(|m| match m {
                        SimpleQueryMessage::CommandComplete(rows) => Some(*rows),
                        _ => None,
                    })
                    .unwrap_or(0)
            }
            _ => self.execute(RECORD_APPLIED, &[&partition, &message_id, &epoch])?,
        };
        if recorded == 0 {
            self.stats.duplicates += 1;
        }
        Ok(recorded == 1)
    }

    /// The connection as user code sees it.
    pub(super) fn conn<'a>(&'a mut self, partition: Option<&'a str>) -> PgConn<'a> {
        let epoch = partition.and_then(|p| self.epoch_of(p));
        PgConn {
            session: self,
            partition,
            epoch,
        }
    }

    /// The connection, between batches: for a call.
    pub(super) fn between_batches(&mut self) -> Result<PgConn<'_>, PgStateError> {
        self.reconnect_if_closed()?;
        Ok(self.conn(None))
    }
}

impl Store for Session {
    type Op = dyn PgWriteOp;
    type Error = PgStateError;
    type CommitFailure = CommitFailure;

    fn begin(&mut self) -> Result<(), PgStateError> {
        self.reconnect_if_closed()?;
        self.control("BEGIN")?;
        self.ended();
        self.tx_open = true;
        Ok(())
    }

    fn prepare(&mut self, op: &mut dyn PgWriteOp) -> Result<(), PgStateError> {
        match op.partition() {
            Some(partition) => self.check_partition(partition).map(drop),
            None => Ok(()),
        }
    }

    fn savepoint(&mut self) -> Result<(), PgStateError> {
        // Sent with (or just before) the write's first statement.
        self.pending.push_str("SAVEPOINT custody_write;");
        self.sp_open = true;
        self.sp_failed = false;
        Ok(())
    }

    fn release(&mut self) -> Result<(), PgStateError> {
        if self.sp_failed {
            return Err(PgStateError::IgnoredError);
        }
        // Sent with the next write's statements, or made moot by the COMMIT.
        self.sp_open = false;
        self.pending.push_str("RELEASE custody_write;");
        Ok(())
    }

    fn rollback_to(&mut self) -> Result<(), PgStateError> {
        self.sp_open = false;
        self.sp_failed = false;
        let sql = format!(
            "{}ROLLBACK TO custody_write; RELEASE custody_write",
            std::mem::take(&mut self.pending)
        );
        self.control(&sql)
    }

    fn commit(&mut self) -> Result<(), CommitFailure> {
        if !self.tx_open || self.tx_failed || self.sp_open {
            return Err(CommitFailure::Failed);
        }
        let result = self.client.batch_execute("COMMIT");
        self.ended();
        match result {
            Ok(()) => Ok(()),
            Err(error) if error.code().is_some() => Err(CommitFailure::Refused(Arc::new(error))),
            Err(error) => Err(CommitFailure::Unknown(Arc::new(error))),
        }
    }

    fn rollback(&mut self) -> Result<(), PgStateError> {
        if !self.tx_open {
            return Ok(());
        }
        let closed = self.client.is_closed();
        self.ended();
        if closed {
            // The server rolls back a transaction whose session is gone.
            return Ok(());
        }
        self.client.batch_execute("ROLLBACK")?;
        Ok(())
    }

    fn in_transaction(&self) -> bool {
        self.tx_open && !self.tx_failed && !self.client.is_closed()
    }

    fn run(&mut self, op: &mut dyn PgWriteOp) -> Result<(), PgStateError> {
        let errors = self.statement_errors;
        op.run(self)?;
        if self.statement_errors != errors {
            return Err(PgStateError::IgnoredError);
        }
        Ok(())
    }

    fn aborted(reason: &'static str) -> PgStateError {
        PgStateError::BatchAborted { reason }
    }

    fn commit_failed(failure: CommitFailure) -> PgStateError {
        match failure {
            CommitFailure::Refused(error) => PgStateError::Commit(error),
            CommitFailure::Unknown(error) => PgStateError::CommitOutcomeUnknown(error),
            CommitFailure::Failed => PgStateError::BatchAborted {
                reason: "its transaction had failed",
            },
        }
    }
}

/// `text` as an SQL string literal (an escape string, so that its meaning
/// does not depend on `standard_conforming_strings`); `None` for text with
/// a NUL, which PostgreSQL refuses (the parameterized path reports it).
fn literal(text: &str) -> Option<String> {
    if text.contains('\0') {
        return None;
    }
    let mut quoted = String::with_capacity(text.len() + 3);
    quoted.push_str("E'");
    for c in text.chars() {
        match c {
            '\'' => quoted.push_str("''"),
            '\\' => quoted.push_str("\\\\"),
            c => quoted.push(c),
        }
    }
    quoted.push('\'');
    Some(quoted)
}

/// The first keyword of `sql`, past blanks and comments, upper-cased, and
/// the one after it.
fn leading_keywords(sql: &str) -> (String, String) {
    let mut rest = sql;
    let mut words = Vec::new();
    while words.len() < 2 {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix("--") {
            rest = after.split_once('\n').map_or("", |(_, tail)| tail);
        } else if let Some(after) = rest.strip_prefix("/*") {
            // Comments nest in PostgreSQL.
            let mut depth = 1;
            let mut i = 0;
            let bytes = after.as_bytes();
            while i < bytes.len() && depth > 0 {
                if bytes[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if bytes[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                } else {
                    i += 1;
                }
            }
            rest = after.get(i..).unwrap_or("");
        } else {
            let end = rest
                .find(|c: char| !c.is_ascii_alphabetic() && c != '_')
                .unwrap_or(rest.len());
            if end == 0 {
                break;
            }
            words.push(rest[..end].to_ascii_uppercase());
            rest = &rest[end..];
        }
    }
    let second = words.get(1).cloned().unwrap_or_default();
    (words.into_iter().next().unwrap_or_default(), second)
}

/// Whether `sql` is transaction or session control that would end the
/// manager's transaction or invalidate its prepared statements.
fn is_transaction_control(sql: &str) -> bool {
    let (first, second) = leading_keywords(sql);
    matches!(
        first.as_str(),
        "BEGIN"
            | "START"
            | "COMMIT"
            | "END"
            | "ROLLBACK"
            | "ABORT"
            | "SAVEPOINT"
            | "RELEASE"
            | "DISCARD"
            | "DEALLOCATE"
    ) || (first == "PREPARE" && second == "TRANSACTION")
}

/// The manager's PostgreSQL connection, as a write or a call sees it.
///
/// Statements go through the extended protocol (one statement each, with
/// parameters), prepared once per connection and cached by their text.
/// Transaction control (`BEGIN`, `COMMIT`, `ROLLBACK`, `SAVEPOINT`,
/// `RELEASE`, `PREPARE TRANSACTION`, ...) and `DISCARD`/`DEALLOCATE` are the
/// manager's: they are refused with [`PgStateError::TransactionControl`],
/// not sent. Parameter and row types are those of the `postgres` crate,
/// re-exported as [`client`](super::client).
///
/// # Examples
///
/// ```no_run
/// use custody::Runtime;
/// use custody::resources::postgres::{PgConn, PgState, PgStateError};
///
/// let rt = Runtime::new();
/// let state = PgState::builder("postgres://postgres@127.0.0.1/app").spawn(&rt, "state")?;
/// let total: i64 = state.write(|c: &mut PgConn<'_>| {
///     c.execute("CREATE TABLE IF NOT EXISTS t (n bigint)", &[])?;
///     c.execute("INSERT INTO t VALUES ($1)", &[&7_i64])?;
///     Ok(c.query_one("SELECT sum(n)::bigint FROM t", &[])?.get(0))
/// })?;
/// assert!(total >= 7);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct PgConn<'a> {
    session: &'a mut Session,
    partition: Option<&'a str>,
    epoch: Option<i64>,
}

impl PgConn<'_> {
    fn guard(&self, sql: &str) -> Result<(), PgStateError> {
        if is_transaction_control(sql) {
            return Err(PgStateError::TransactionControl {
                statement: sql.to_owned(),
            });
        }
        Ok(())
    }

    /// Runs one statement and returns the number of rows it changed.
    ///
    /// # Errors
    ///
    /// [`PgStateError::Postgres`] if PostgreSQL refused it,
    /// [`PgStateError::TransactionControl`] for transaction control.
    pub fn execute(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, PgStateError> {
        self.guard(sql)?;
        self.session.execute(sql, params)
    }

    /// Runs one statement and returns its rows.
    ///
    /// # Errors
    ///
    /// As [`execute`](PgConn::execute).
    pub fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, PgStateError> {
        self.guard(sql)?;
        self.session.query(sql, params)
    }

    /// Runs one statement and returns its one row.
    ///
    /// # Errors
    ///
    /// As [`execute`](PgConn::execute); [`PgStateError::Postgres`] too if
    /// the statement returned no row or more than one.
    pub fn query_one(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, PgStateError> {
        self.guard(sql)?;
        let statement = self.session.statement(sql)?;
        let result = self.session.client.query_one(&statement, params);
        self.session.note(result)
    }

    /// Runs one statement and returns its row, if any.
    ///
    /// # Errors
    ///
    /// As [`execute`](PgConn::execute); [`PgStateError::Postgres`] too if
    /// the statement returned more than one row.
    pub fn query_opt(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, PgStateError> {
        self.guard(sql)?;
        self.session.query_opt(sql, params)
    }

    /// The partition of a fenced write ([`apply`](super::PgStateHandle::apply)),
    /// `None` for an unfenced write or a call.
    pub fn partition(&self) -> Option<&str> {
        self.partition
    }

    /// The epoch this owner holds the write's partition under, checked in
    /// this transaction (to stamp rows with); `None` for an unfenced write
    /// or a call.
    pub fn epoch(&self) -> Option<i64> {
        self.epoch
    }
}

impl fmt::Debug for PgConn<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConn")
            .field("partition", &self.partition)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::{is_transaction_control, literal};

    #[test]
    fn literals_escape_quotes_and_backslashes_and_refuse_nul() {
        assert_eq!(literal("m-1").unwrap(), "E'm-1'");
        assert_eq!(literal("it's").unwrap(), "E'it''s'");
        assert_eq!(
            literal(r"a\'); DROP TABLE t; --").unwrap(),
            r"E'a\\''); DROP TABLE t; --'"
        );
        assert_eq!(literal("").unwrap(), "E''");
        assert_eq!(literal("nul\0"), None);
    }

    #[test]
    fn transaction_control_is_recognized_past_blanks_and_comments() {
        for sql in [
            "COMMIT",
            "  commit;",
            "-- c\nEND",
            "/* a /* nested */ comment */ rollback to custody_write",
            "Begin Isolation Level Serializable",
            "start transaction",
            "savepoint x",
            "release custody_write",
            "abort",
            "prepare transaction 'x'",
            "DISCARD ALL",
            "deallocate all",
        ] {
            assert!(is_transaction_control(sql), "{sql}");
        }
        for sql in [
            "INSERT INTO commits VALUES (1)",
            "SELECT 'COMMIT'",
            "prepare q AS SELECT 1",
            "UPDATE t SET ended = true",
            "-- COMMIT\nSELECT 1",
            "",
        ] {
            assert!(!is_transaction_control(sql), "{sql}");
        }
    }
}
