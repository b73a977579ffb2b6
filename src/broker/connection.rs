//! `Broker`: one AMQP connection per process, and the settings every queue
//! and channel made from it shares.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use futures_lite::{Stream, StreamExt};

use lapin::options::{ConfirmSelectOptions, QueueDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Channel, Connection, ConnectionProperties};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::{BrokerError, QueueMismatch, parse_inequivalent_arg};
use super::names;
use super::remote::RemoteHandle;
use super::serve::{self, Served};
use crate::error::SpawnError;
use crate::manager::Manager;
use crate::runtime::Runtime;
use crate::util::deadline_after;

/// The environment variable [`Broker::from_env`] reads.
pub const URL_VAR: &str = "CUSTODY_AMQP_URL";
/// The URL [`Broker::from_env`] uses when [`URL_VAR`] is not set.
pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The default for [`BrokerBuilder::max_body`]: 16 MiB.
pub const DEFAULT_MAX_BODY: usize = 16 * 1024 * 1024;

/// The default first pause of [`BrokerBuilder::reconnect_backoff`]: 100 ms.
pub const DEFAULT_RECONNECT_INITIAL: Duration = Duration::from_millis(100);
/// The default longest pause of [`BrokerBuilder::reconnect_backoff`]: 10 s.
pub const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(10);

/// Settings for a [`Broker`]; made by [`Broker::builder`] (one node, or a
/// comma-separated list of nodes) or [`BrokerBuilder::urls`] (the nodes of a
/// cluster).
#[derive(Clone)]
#[must_use = "a BrokerBuilder does nothing until `connect`"]
pub struct BrokerBuilder {
    /// The nodes to try, in order.
    urls: Vec<String>,
    settings: Settings,
}

impl fmt::Debug for BrokerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let urls: Vec<String> = self.urls.iter().map(|url| mask_password(url)).collect();
        f.debug_struct("BrokerBuilder")
            .field("urls", &urls)
            .field("settings", &self.settings)
            .finish()
    }
}

/// What every channel and queue of one `Broker` shares.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) heartbeat: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) confirm_timeout: Duration,
    pub(crate) prefetch: u16,
    pub(crate) delivery_limit: u32,
    pub(crate) max_body: usize,
    /// Whether a lost connection is replaced.
    pub(crate) reconnect: bool,
    /// The pause after the first round of reconnect attempts that failed.
    pub(crate) reconnect_initial: Duration,
    /// The longest pause between two rounds of reconnect attempts.
    pub(crate) reconnect_max: Duration,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            heartbeat: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            confirm_timeout: Duration::from_secs(10),
            prefetch: 256,
            delivery_limit: 5,
            max_body: DEFAULT_MAX_BODY,
            reconnect: true,
            reconnect_initial: DEFAULT_RECONNECT_INITIAL,
            reconnect_max: DEFAULT_RECONNECT_MAX,
        }
    }
}

impl BrokerBuilder {
    /// Settings for a connection to one of several nodes of a RabbitMQ
    /// cluster: [`connect`](BrokerBuilder::connect) tries them in the order
    /// given, each within the connect timeout, and keeps the first that
    /// answers. A quorum queue lives on every node of the cluster, so any
    /// node serves any manager.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use custody::broker::{Broker, BrokerBuilder};
    ///
    /// let broker = BrokerBuilder::urls([
    ///     "amqp://guest:guest@10.0.0.1:5672/%2f",
    ///     "amqp://guest:guest@10.0.0.2:5672/%2f",
    ///     "amqp://guest:guest@10.0.0.3:5672/%2f",
    /// ])
    /// .connect()?;
    /// println!("connected to {}", broker.host());
    /// # Ok::<(), custody::broker::BrokerError>(())
    /// ```
    pub fn urls<I, S>(urls: I) -> BrokerBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        BrokerBuilder {
            urls: urls.into_iter().map(Into::into).collect(),
            settings: Settings::default(),
        }
    }

    /// The heartbeat interval asked of the broker (default 5 s; whole
    /// seconds, at least 1). A frozen peer is noticed after about twice this.
    pub fn heartbeat(mut self, interval: Duration) -> Self {
        self.settings.heartbeat = interval.max(Duration::from_secs(1));
        self
    }

    /// How long `connect` may take, TCP and AMQP handshake together
    /// (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.settings.connect_timeout = timeout;
        self
    }

    /// How long a publish waits for the broker's confirm, and any other
    /// operation for its answer (default 10 s). A broker under a memory or
    /// disk alarm blocks publishers without a word: this is what ends the wait.
    pub fn confirm_timeout(mut self, timeout: Duration) -> Self {
        self.settings.confirm_timeout = timeout;
        self
    }

    /// How many unacknowledged deliveries a served manager may hold (default
    /// 256; 0 is taken as 1). Bigger batches, fewer acks; more redelivered
    /// after a crash.
    pub fn prefetch(mut self, n: u16) -> Self {
        self.settings.prefetch = n.max(1);
        self
    }

    /// How many times a message may stop its owner (a panicking handler, or
    /// an owner that died or lost its connection while handling it alone)
    /// before the owner dead-letters it (default 5, so at most 6 handlings).
    /// Redelivered messages are handled one at a time and charged through a
    /// durable record of the queue's own, so messages returned only because
    /// they were in the prefetch window of a crash are not charged. The
    /// queue's broker-side `x-delivery-limit` is this plus
    /// [`BROKER_LIMIT_MARGIN`], a backstop: it is an argument of the queue,
    /// so every process declaring the queue must use the same value, or the
    /// second declaration fails with [`BrokerError::QueueMismatch`] (which
    /// says how to change it; a queue declared by a version without the
    /// margin must be migrated).
    pub fn delivery_limit(mut self, n: u32) -> Self {
        self.settings.delivery_limit = n;
        self
    }

    /// The largest message body a served manager takes, in bytes (default
    /// [`DEFAULT_MAX_BODY`], 16 MiB). A delivery with a larger body is not
    /// decoded: it is dead-lettered, with the reason in `x-custody-error`,
    /// and its sender's `join` reports it. It does not limit what this
    /// process sends.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use custody::broker::Broker;
    ///
    /// let broker = Broker::builder("amqp://guest:guest@127.0.0.1:5672/%2f")
    ///     .max_body(64 * 1024)
    ///     .connect()?;
    /// # Ok::<(), custody::broker::BrokerError>(())
    /// ```
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.settings.max_body = bytes;
        self
    }

    /// Whether a connection lost after `connect` is replaced (default
    /// `true`). With `false`, a lost connection stays lost, as
    /// [`BrokerState::Lost`]: served managers stop serving (a standby takes
    /// over) and every [`RemoteHandle`] call fails; the application builds a
    /// new `Broker` to go on.
    pub fn reconnect(mut self, on: bool) -> Self {
        self.settings.reconnect = on;
        self
    }

    /// The pauses between rounds of reconnect attempts (defaults
    /// [`DEFAULT_RECONNECT_INITIAL`], 100 ms, and [`DEFAULT_RECONNECT_MAX`],
    /// 10 s). A round tries every node once, starting after the node that
    /// was lost, each within the connect timeout; the first round starts at
    /// once, and after each round that failed the pause doubles, from
    /// `initial` up to `max`, and is drawn at random between half of it and
    /// all of it (so that the clients of a restarted broker do not all come
    /// back at the same instant). `initial` is at least 1 ms; `max` at least
    /// `initial`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use custody::broker::Broker;
    ///
    /// let broker = Broker::builder("amqp://guest:guest@127.0.0.1:5672/%2f")
    ///     .reconnect_backoff(Duration::from_millis(50), Duration::from_secs(2))
    ///     .connect()?;
    /// # Ok::<(), custody::broker::BrokerError>(())
    /// ```
    pub fn reconnect_backoff(mut self, initial: Duration, max: Duration) -> Self {
        let initial = initial.max(Duration::from_millis(1));
        self.settings.reconnect_initial = initial;
        self.settings.reconnect_max = max.max(initial);
        self
    }

    /// Connects: to the first of its nodes that answers, trying them in
    /// order, each within the connect timeout (so with every node down, it
    /// fails after the connect timeout times the number of nodes at most).
    ///
    /// # Errors
    ///
    /// [`BrokerError::InvalidUrl`] if any of the URLs is invalid (before
    /// trying any node; an `amqps://` URL without the feature `amqps` too).
    /// With one node, [`BrokerError::Unreachable`] (within the connect
    /// timeout), [`BrokerError::Refused`] (credentials, vhost) or, for an
    /// `amqps://` URL, [`BrokerError::Tls`] (no TLS there, a certificate not
    /// trusted);
    /// with several, [`BrokerError::NoNodeReachable`], holding each node's
    /// error in the order tried.
    pub fn connect(self) -> Result<Broker, BrokerError> {
        let mut nodes = Vec::with_capacity(self.urls.len());
        for url in &self.urls {
            nodes.push(Node::new(parse_url(url)?, &self.settings));
        }
        if nodes.is_empty() {
            return Err(BrokerError::InvalidUrl {
                reason: "no broker URL given".to_owned(),
            });
        }
        let mut attempts = Vec::with_capacity(nodes.len());
        for (at, node) in nodes.iter().enumerate() {
            match node.connect(&self.settings) {
                Ok(connection) => {
                    tracing::debug!(host = %node.host, "connected to the AMQP broker");
                    let link = Link::start(nodes, at, connection, self.settings)?;
                    return Ok(Broker {
                        link: Arc::new(link),
                    });
                }
                Err(e) => {
                    tracing::debug!(error = %e, "no connection to this AMQP broker node");
                    attempts.push(e);
                }
            }
        }
        if attempts.len() == 1 {
            return Err(attempts.pop().expect("one attempt"));
        }
        Err(BrokerError::NoNodeReachable { attempts })
    }
}

/// One node to connect to: its URL, parsed (it holds the password: never
/// printed), and its `host:port`.
struct Node {
    uri: AMQPUri,
    host: String,
    /// An `amqps://` node.
    tls: bool,
}

impl Node {
    /// The node of `uri`, with the heartbeat and connect timeout of
    /// `settings` unless the URL sets its own.
    fn new(mut uri: AMQPUri, settings: &Settings) -> Node {
        let host = format!("{}:{}", uri.authority.host, uri.authority.port);
        let tls = uri.scheme == AMQPScheme::AMQPS;
        if uri.query.heartbeat.is_none() {
            let seconds = settings.heartbeat.as_secs().clamp(1, u64::from(u16::MAX));
            uri.query.heartbeat = Some(u16::try_from(seconds).unwrap_or(u16::MAX));
        }
        if uri.query.connection_timeout.is_none() {
            let millis = settings.connect_timeout.as_millis().max(1);
            uri.query.connection_timeout = Some(u64::try_from(millis).unwrap_or(u64::MAX));
        }
        Node { uri, host, tls }
    }

    /// Connects to this node within the connect timeout.
    fn connect(&self, settings: &Settings) -> Result<Connection, BrokerError> {
        let host = self.host.clone();
        let properties = ConnectionProperties::default().with_connection_name(LongString::from(
            format!("custody pid {}", std::process::id()),
        ));
        let connecting = Connection::connect_uri(self.uri.clone(), properties);
        match block_until(deadline_after(settings.connect_timeout), connecting) {
            None => Err(BrokerError::Unreachable {
                host,
                source: Box::new(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no connection within {:?}", settings.connect_timeout),
                )),
            }),
            Some(Err(e)) if e.is_amqp_error() => Err(BrokerError::Refused {
                host,
                source: Box::new(e),
            }),
            Some(Err(e)) if self.tls && is_tls_failure(&e) => Err(BrokerError::Tls {
                host,
                source: Box::new(e),
            }),
            Some(Err(e)) => Err(BrokerError::Unreachable {
                host,
                source: Box::new(e),
            }),
            Some(Ok(connection)) => Ok(connection),
        }
    }
}

/// Parses one broker URL; the error never holds its password. An
/// `amqps://` URL needs the feature `amqps`.
fn parse_url(url: &str) -> Result<AMQPUri, BrokerError> {
    let uri: AMQPUri = url
        .parse()
        .map_err(|reason: String| BrokerError::InvalidUrl {
            reason: reason.replace(url, &mask_password(url)),
        })?;
    if uri.scheme == AMQPScheme::AMQPS && !cfg!(feature = "amqps") {
        return Err(BrokerError::InvalidUrl {
            reason: format!(
                "{} is an amqps:// URL: TLS needs the crate feature `amqps`",
                mask_password(url)
            ),
        });
    }
    Ok(uri)
}

/// Whether a failed `amqps://` connect failed in the TLS layer rather than
/// in reaching the host: the TLS stack reports a handshake it cannot
/// complete (a peer that does not speak TLS, a certificate it does not
/// trust) as invalid data, or as the peer closing mid-handshake.
fn is_tls_failure(error: &lapin::Error) -> bool {
    match error.kind() {
        lapin::ErrorKind::IOError(io) => matches!(
            io.kind(),
            io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput | io::ErrorKind::UnexpectedEof
        ),
        _ => false,
    }
}

/// The URLs of a comma-separated list of nodes, trimmed, empty ones dropped
/// (a comma inside a password is written `%2C`).
fn split_urls(urls: &str) -> Vec<String> {
    urls.split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(str::to_owned)
        .collect()
}

/// One connection to a RabbitMQ broker: the process's way to serve managers
/// from durable queues ([`serve`](Broker::serve)) and to send to managers
/// served elsewhere ([`remote_handle`](Broker::remote_handle)).
///
/// Cheap to clone; the connection closes when the last clone, and the last
/// [`Served`] and [`RemoteHandle`] made from it, are dropped, or when
/// [`close`](Broker::close) is called. The connection runs its own I/O
/// thread: make one per process and share it.
///
/// A connection lost after `connect` is replaced (unless
/// [`BrokerBuilder::reconnect`] turned that off): the broker keeps its nodes
/// and settings and tries the nodes again, in rounds with a growing pause
/// between them ([`BrokerBuilder::reconnect_backoff`]). Meanwhile
/// [`state`](Broker::state) says where it is, served managers wait and then
/// subscribe again, and each [`RemoteHandle`] call waits for the new
/// connection until its own deadline.
///
/// # Examples
///
/// ```no_run
/// use custody::broker::Broker;
///
/// let broker = Broker::from_env()?; // CUSTODY_AMQP_URL, or guest@127.0.0.1
/// println!("connected to {}", broker.host());
/// # Ok::<(), custody::broker::BrokerError>(())
/// ```
#[derive(Clone)]
pub struct Broker {
    pub(crate) link: Arc<Link>,
}

/// Where a [`Broker`]'s connection is:
///
/// ```text
///              connect
///                 |
///                 v
///   +-------> Connected ------------ close -------------+
///   |             |                                     |
///   |    the connection is lost (socket error,          |
///   |    missed heartbeat, broker closed it)            |
///   |             v                                     v
///   |           Lost --> reconnect off: stays Lost    Closed
///   |             |                                     ^
///   |       first attempt                               |
///   |             v                                     |
///   +------ Reconnecting ----------- close -------------+
///  a node    rounds over every node, a pause between
///  answered  rounds: doubling, capped, with jitter
/// ```
///
/// `Closed` and a `Lost` with reconnecting off are final: every call on
/// something made from the broker then fails with a typed error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BrokerState {
    /// A connection is open.
    Connected,
    /// The connection was lost; reconnecting has not started yet (or is
    /// turned off, and then this is final).
    Lost,
    /// Trying the nodes again.
    Reconnecting,
    /// Closed by the application ([`Broker::close`]); final.
    Closed,
}

impl fmt::Display for BrokerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BrokerState::Connected => "connected",
            BrokerState::Lost => "lost",
            BrokerState::Reconnecting => "reconnecting",
            BrokerState::Closed => "closed",
        })
    }
}

/// The connection and its settings, shared by everything made from it; a
/// supervisor thread (`custody-amqp-link`) watches the connection and
/// replaces it when it is lost.
pub(crate) struct Link {
    core: Arc<Core>,
    pub(crate) settings: Settings,
}

/// What the link and its supervisor thread share.
struct Core {
    nodes: Vec<Node>,
    settings: Settings,
    live: Mutex<Live>,
    /// Notified at each change of `live`.
    changed: Condvar,
    /// Connections made after the first.
    reconnects: AtomicU64,
    /// The jitter's random state (splitmix64).
    jitter: AtomicU64,
}

/// The current connection, if any.
struct Live {
    state: BrokerState,
    /// Set only while `Connected`.
    connection: Option<Arc<Connection>>,
    /// The node connected to (or last connected to).
    node: usize,
    /// Counts the connections made: a user that saw generation `g` fail
    /// waits for another one.
    generation: u64,
    /// Why the connection was lost, or why the last attempt failed.
    reason: Option<String>,
}

/// Why no connection could be had.
pub(crate) enum Down {
    /// Closed by the application.
    Closed,
    /// Lost, and reconnecting is off.
    Lost(String),
    /// Not reconnected before the deadline.
    NotYet(String),
}

/// How often the supervisor looks at the connection's state besides
/// listening to its events.
const WATCH_POLL: Duration = Duration::from_millis(250);

/// The connection's events (lapin's), listened to by the supervisor.
type Events = Pin<Box<dyn Stream<Item = lapin::Event> + Send>>;

impl fmt::Debug for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Broker")
            .field("host", &self.link.host())
            .field("state", &self.link.state())
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// Settings for a connection to `url` (`amqp://user:password@host:port/vhost`,
    /// with the vhost URL-encoded: `%2f` is `/`; `amqps://` for TLS, with
    /// the feature `amqps`, checking the broker's certificate against the
    /// system's root certificates). A comma-separated list of
    /// URLs names several nodes of a cluster, tried in order (see
    /// [`BrokerBuilder::urls`]).
    pub fn builder(url: impl Into<String>) -> BrokerBuilder {
        BrokerBuilder::urls(split_urls(&url.into()))
    }

    /// Connects to `url` with the default settings: a 5 s heartbeat and
    /// connect timeout, 10 s confirm timeout, prefetch 256, delivery limit 5,
    /// bodies of at most 16 MiB.
    ///
    /// # Errors
    ///
    /// As [`BrokerBuilder::connect`].
    pub fn connect(url: &str) -> Result<Broker, BrokerError> {
        Broker::builder(url).connect()
    }

    /// Connects to the URL in `CUSTODY_AMQP_URL` (or to the first node
    /// that answers of a comma-separated list there), or to
    /// `amqp://guest:guest@127.0.0.1:5672/%2f` if it is not set.
    ///
    /// # Errors
    ///
    /// As [`BrokerBuilder::connect`].
    pub fn from_env() -> Result<Broker, BrokerError> {
        Broker::builder(url_from_env()).connect()
    }

    /// `host:port` of the node connected to (or, while reconnecting, of
    /// the last one).
    pub fn host(&self) -> String {
        self.link.host()
    }

    /// Where the connection is: connected, lost, reconnecting or closed
    /// (see [`BrokerState`]).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use custody::broker::{Broker, BrokerState};
    ///
    /// let broker = Broker::from_env()?;
    /// assert_eq!(broker.state(), BrokerState::Connected);
    /// broker.close();
    /// assert_eq!(broker.state(), BrokerState::Closed);
    /// # Ok::<(), custody::broker::BrokerError>(())
    /// ```
    pub fn state(&self) -> BrokerState {
        self.link.state()
    }

    /// How many times a lost connection was replaced.
    pub fn reconnects(&self) -> u64 {
        self.link.core.reconnects.load(Ordering::Relaxed)
    }

    /// Closes the connection for good ([`BrokerState::Closed`]), for every
    /// clone and everything made from it: served managers stop serving as
    /// after a lost connection (their unacknowledged deliveries go back to
    /// the queue), and every [`RemoteHandle`] call fails. Waits at most the
    /// confirm timeout for the broker to acknowledge the close.
    pub fn close(&self) {
        self.link.close(true);
    }

    /// Serves `manager` from the durable queue `custody.<name>`: spawns it on
    /// `rt` under `name`, declares the queue (and its dead-letter queue
    /// `custody.<name>.dead`), and feeds it every delivery. A delivery is
    /// acknowledged only after the batch it came in was handled and the
    /// manager's `idle` hook ran, and after the done records of the batch
    /// were confirmed. While another process serves the same name, this one
    /// is its hot standby: it gets deliveries only once the other stops.
    ///
    /// The returned [`Served`] stops serving when dropped.
    ///
    /// # Errors
    ///
    /// [`BrokerError::InvalidName`], [`BrokerError::Spawn`] (for example a
    /// name already running in `rt`), [`BrokerError::QueueMismatch`] when
    /// the queue exists with other arguments (another delivery limit, a
    /// classic queue of that name: keep the queue's setting, or drain it,
    /// delete it with [`delete_queues`](Broker::delete_queues) and serve
    /// again; nothing was spawned and the connection stays usable), or a
    /// failed or timed-out declaration.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use custody::broker::Broker;
    /// use custody::{Context, Manager, Runtime};
    ///
    /// struct Total(u64);
    /// impl Manager for Total {
    ///     type Msg = u64;
    ///     fn handle(&mut self, n: u64, _ctx: &mut Context<'_, u64>) {
    ///         self.0 += n;
    ///     }
    /// }
    ///
    /// let rt = Runtime::new();
    /// let broker = Broker::from_env()?;
    /// let served = broker.serve(&rt, "total", Total(0))?;
    /// // ... other processes send with broker.remote_handle::<u64>("total") ...
    /// served.stop(); // finish what was delivered, acknowledge it, leave the rest queued
    /// # Ok::<(), custody::broker::BrokerError>(())
    /// ```
    pub fn serve<Mg>(
        &self,
        rt: &Runtime,
        name: &str,
        manager: Mg,
    ) -> Result<Served<Mg::Msg>, BrokerError>
    where
        Mg: Manager,
        Mg::Msg: DeserializeOwned,
    {
        serve::serve(self, rt, name, manager)
    }

    /// A new sender to the manager served under `name`, with a producer id
    /// of its own and a durable done queue `custody.done.<producer-id>`
    /// (deleted when the last clone of the handle is dropped). Declares the
    /// manager's queue too, so messages can be sent before any owner runs.
    ///
    /// # Errors
    ///
    /// [`BrokerError::InvalidName`], [`BrokerError::QueueMismatch`] (see
    /// [`serve`](Broker::serve)), or a failed or timed-out declaration.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use custody::broker::Broker;
    ///
    /// let broker = Broker::from_env()?;
    /// let total = broker.remote_handle::<u64>("total")?;
    /// for n in 1..=10 {
    ///     total.tell(n)?; // confirmed: the broker has it on disk
    /// }
    /// total.join()?; // every one handled, and the owner's idle hook ran
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn remote_handle<M: Serialize>(&self, name: &str) -> Result<RemoteHandle<M>, BrokerError> {
        RemoteHandle::new(self, name)
    }
}

impl Link {
    /// Starts watching `connection`, made to `nodes[at]`.
    fn start(
        nodes: Vec<Node>,
        at: usize,
        connection: Connection,
        settings: Settings,
    ) -> Result<Link, BrokerError> {
        let events: Events = Box::pin(connection.events_listener());
        let seed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()).rotate_left(32);
        let core = Arc::new(Core {
            nodes,
            settings: settings.clone(),
            live: Mutex::new(Live {
                state: BrokerState::Connected,
                connection: Some(Arc::new(connection)),
                node: at,
                generation: 1,
                reason: None,
            }),
            changed: Condvar::new(),
            reconnects: AtomicU64::new(0),
            jitter: AtomicU64::new(seed),
        });
        let watched = Arc::clone(&core);
        let name = "custody-amqp-link".to_owned();
        let spawned = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || supervise(&watched, events));
        if let Err(source) = spawned {
            core.close(false);
            return Err(SpawnError::Thread { name, source }.into());
        }
        Ok(Link { core, settings })
    }

    /// `host:port` of the node connected to, or last connected to.
    pub(crate) fn host(&self) -> String {
        let live = self.core.live();
        self.core.nodes[live.node].host.clone()
    }

    pub(crate) fn state(&self) -> BrokerState {
        self.core.live().state
    }

    /// Whether the connection is closed or lost for good.
    pub(crate) fn is_final(&self) -> bool {
        let live = self.core.live();
        live.state == BrokerState::Closed
            || (live.state == BrokerState::Lost && !self.settings.reconnect)
    }

    /// Whether a connection is open (as far as the client knows).
    pub(crate) fn is_connected(&self) -> bool {
        let live = self.core.live();
        live.state == BrokerState::Connected
            && live
                .connection
                .as_ref()
                .is_some_and(|c| c.status().connected())
    }

    pub(crate) fn close(&self, graceful: bool) {
        self.core.close(graceful);
    }

    /// A deadline `confirm_timeout` from now.
    pub(crate) fn confirm_deadline(&self) -> Option<Instant> {
        deadline_after(self.settings.confirm_timeout)
    }

    /// Waits until a connection is open, or `deadline` passes (`None`: no
    /// deadline), or the connection is closed or lost for good.
    pub(crate) fn wait_connected(
        &self,
        deadline: Option<Instant>,
    ) -> Result<(Arc<Connection>, u64), Down> {
        let core = &*self.core;
        let mut live = core.live();
        loop {
            match live.state {
                BrokerState::Connected => {
                    if let Some(connection) = &live.connection {
                        return Ok((Arc::clone(connection), live.generation));
                    }
                }
                BrokerState::Closed => return Err(Down::Closed),
                BrokerState::Lost if !self.settings.reconnect => {
                    return Err(Down::Lost(live.reason.clone().unwrap_or_default()));
                }
                BrokerState::Lost | BrokerState::Reconnecting => {}
            }
            live = match wait_slice(deadline) {
                Some(slice) => {
                    core.changed
                        .wait_timeout(live, slice)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
                None => {
                    let reason = live
                        .reason
                        .clone()
                        .unwrap_or_else(|| "the connection is lost".to_owned());
                    return Err(Down::NotYet(reason));
                }
            };
        }
    }

    /// Waits until the connection of `generation` is no longer the current
    /// one: after a failure that says it is gone, before the supervisor has
    /// noticed. `Disconnected` if `deadline` passes first.
    pub(crate) fn wait_replaced(
        &self,
        generation: u64,
        deadline: Option<Instant>,
    ) -> Result<(), BrokerError> {
        let core = &*self.core;
        let mut live = core.live();
        while live.state == BrokerState::Connected && live.generation == generation {
            let Some(slice) = wait_slice(deadline) else {
                drop(live);
                return Err(
                    self.down_error(Down::NotYet("the connection is no longer open".to_owned()))
                );
            };
            live = core
                .changed
                .wait_timeout(live, slice)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        Ok(())
    }

    /// The typed error for a connection that could not be had.
    pub(crate) fn down_error(&self, down: Down) -> BrokerError {
        match down {
            Down::Closed => BrokerError::Closed,
            Down::Lost(reason) => BrokerError::Disconnected {
                host: self.host(),
                reason,
                reconnecting: false,
            },
            Down::NotYet(reason) => BrokerError::Disconnected {
                host: self.host(),
                reason,
                reconnecting: true,
            },
        }
    }

    /// Runs one broker operation with the confirm timeout as its deadline.
    pub(crate) fn run<T, E, F>(
        &self,
        what: impl FnOnce() -> String,
        fut: F,
    ) -> Result<T, BrokerError>
    where
        F: Future<Output = Result<T, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        match block_until(self.confirm_deadline(), fut) {
            Some(Ok(v)) => Ok(v),
            Some(Err(e)) => Err(BrokerError::Operation {
                what: what(),
                host: self.host(),
                source: Box::new(e),
            }),
            None => Err(BrokerError::Timeout {
                what: what(),
                host: self.host(),
                waited: self.settings.confirm_timeout,
            }),
        }
    }

    /// A new channel, waiting until `deadline` for a connection if there is
    /// none.
    pub(crate) fn open_channel(&self, deadline: Option<Instant>) -> Result<Channel, BrokerError> {
        loop {
            let (connection, generation) = self
                .wait_connected(deadline)
                .map_err(|down| self.down_error(down))?;
            match self.run(
                || "opening a channel".to_owned(),
                connection.create_channel(),
            ) {
                Ok(channel) => return Ok(channel),
                Err(_) if !connection.status().connected() => {
                    self.wait_replaced(generation, deadline)?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A new channel with publisher confirms on, waiting for a connection
    /// until `deadline`.
    pub(crate) fn confirmed_channel_until(
        &self,
        deadline: Option<Instant>,
    ) -> Result<Channel, BrokerError> {
        let channel = self.open_channel(deadline)?;
        self.run(
            || "turning on publisher confirms".to_owned(),
            channel.confirm_select(ConfirmSelectOptions::default()),
        )?;
        Ok(channel)
    }

    /// Declares the durable quorum queue of manager `name`, single active
    /// consumer, with its delivery limit and its dead-letter queue.
    pub(crate) fn declare_mailbox(&self, channel: &Channel, name: &str) -> Result<(), BrokerError> {
        let dead = names::dead_queue(name);
        let mut dead_args = FieldTable::default();
        dead_args.insert("x-queue-type".into(), long_string("quorum"));
        self.run(
            || format!("declaring queue `{dead}`"),
            channel.queue_declare(
                ShortString::from(dead.as_str()),
                durable(),
                dead_args.clone(),
            ),
        )
        .map_err(|e| self.mismatch(e, &dead, &dead_args))?;
        // Where the broker dead-letters on its own (its backstop limit):
        // the owners move each one to `dead`, telling its producer and asker.
        let limit = names::limit_queue(name);
        self.run(
            || format!("declaring queue `{limit}`"),
            channel.queue_declare(
                ShortString::from(limit.as_str()),
                durable(),
                dead_args.clone(),
            ),
        )
        .map_err(|e| self.mismatch(e, &limit, &dead_args))?;
        let queue = names::mailbox_queue(name);
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), long_string("quorum"));
        args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(
                i64::from(self.settings.delivery_limit) + i64::from(BROKER_LIMIT_MARGIN),
            ),
        );
        args.insert("x-dead-letter-exchange".into(), long_string(""));
        args.insert("x-dead-letter-routing-key".into(), long_string(&limit));
        self.run(
            || format!("declaring queue `{queue}`"),
            channel.queue_declare(ShortString::from(queue.as_str()), durable(), args.clone()),
        )
        .map_err(|e| self.mismatch(e, &queue, &args))?;
        Ok(())
    }

    /// Declares the record of kind `kind`'s partition count: the empty durable
    /// quorum queue `custody.<kind>.partitions`, whose `x-max-length` is the
    /// count. The broker checks that argument at every declaration and refuses
    /// another value, so the first process to declare the kind fixes its count
    /// and a later one with another count gets
    /// [`BrokerError::PartitionMismatch`]. Nothing is ever published to it.
    pub(crate) fn declare_partition_count(
        &self,
        channel: &Channel,
        kind: &str,
        partitions: u32,
    ) -> Result<(), BrokerError> {
        let queue = names::partitions_queue(kind);
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(LongString::from("quorum")),
        );
        args.insert(
            "x-max-length".into(),
            AMQPValue::LongLongInt(i64::from(partitions)),
        );
        let declared = self.run(
            || format!("declaring queue `{queue}`"),
            channel.queue_declare(
                ShortString::from(queue.as_str()),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                args.clone(),
            ),
        );
        match declared {
            Ok(_) => Ok(()),
            Err(e) => match self.mismatch(e, &queue, &args) {
                BrokerError::QueueMismatch(m) if m.argument.as_deref() == Some("x-max-length") => {
                    Err(BrokerError::PartitionMismatch {
                        kind: kind.to_owned(),
                        recorded: m.current.as_deref().and_then(|c| c.parse().ok()),
                        asked: partitions,
                    })
                }
                other => Err(other),
            },
        }
    }

    /// Declares a sharded kind's queues, on a channel of its own: the
    /// record of its partition count (checked), then every partition's
    /// mailbox.
    pub(crate) fn declare_sharded(&self, kind: &str, partitions: u32) -> Result<(), BrokerError> {
        let channel = self.open_channel(self.confirm_deadline())?;
        let declared = self.declare_sharded_on(&channel, kind, partitions);
        let _ = block_until(
            self.confirm_deadline(),
            channel.close(200, ShortString::from("custody: declared")),
        );
        declared
    }

    /// [`declare_sharded`](Self::declare_sharded) on `channel`.
    pub(crate) fn declare_sharded_on(
        &self,
        channel: &Channel,
        kind: &str,
        partitions: u32,
    ) -> Result<(), BrokerError> {
        self.declare_partition_count(channel, kind, partitions)?;
        (0..partitions).try_for_each(|p| {
            self.declare_mailbox(channel, &super::shard::partition::partition_name(kind, p))
        })
    }

    /// `error` as [`BrokerError::QueueMismatch`] if the broker refused the
    /// declaration of `queue` with `args` because the queue exists with
    /// other arguments (`PRECONDITION_FAILED`); unchanged otherwise.
    pub(crate) fn mismatch(
        &self,
        error: BrokerError,
        queue: &str,
        args: &FieldTable,
    ) -> BrokerError {
        let BrokerError::Operation { source, .. } = &error else {
            return error;
        };
        let Some(lapin::ErrorKind::ProtocolError(amqp)) = source
            .downcast_ref::<lapin::Error>()
            .map(lapin::Error::kind)
        else {
            return error;
        };
        if *amqp.kind() != AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED) {
            return error;
        }
        let reply = amqp.get_message().as_str().to_owned();
        let (argument, current, requested) = match parse_inequivalent_arg(&reply) {
            Some((argument, received, current)) => {
                // What this declaration asked for, from its own table when
                // the argument is one of it (`durable` is an option: true).
                let asked = match argument.as_str() {
                    "durable" => Some("true".to_owned()),
                    key => args
                        .inner()
                        .get(&ShortString::from(key))
                        .map(describe_value),
                };
                (Some(argument), current, asked.or(received))
            }
            None => (None, None, None),
        };
        BrokerError::QueueMismatch(Box::new(QueueMismatch {
            queue: queue.to_owned(),
            host: self.host(),
            argument,
            current,
            requested,
            reply,
        }))
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // The last user is gone: the supervisor ends, and the connection
        // closes as lapin closes a dropped one.
        self.core.close(false);
    }
}

impl Core {
    fn live(&self) -> MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn host(&self, live: &Live) -> String {
        self.nodes[live.node].host.clone()
    }

    /// Closed for good; with `graceful`, waits (the confirm timeout at most)
    /// for the broker to acknowledge the close.
    fn close(&self, graceful: bool) {
        let connection = {
            let mut live = self.live();
            if live.state == BrokerState::Closed {
                return;
            }
            live.state = BrokerState::Closed;
            live.reason = Some("closed by the application".to_owned());
            live.connection.take()
        };
        self.changed.notify_all();
        tracing::debug!("the AMQP broker connection is closed");
        if let (true, Some(connection)) = (graceful, connection) {
            let _ = block_until(
                deadline_after(self.settings.confirm_timeout),
                connection.close(200, ShortString::from("custody: closed")),
            );
        }
    }

    /// Listens to the connection until it is lost (`Some(why)`) or closed
    /// (`None`).
    fn watch(&self, events: &mut Events) -> Option<String> {
        let mut listening = true;
        loop {
            let mut reason = None;
            if listening {
                match block_until(deadline_after(WATCH_POLL), events.next()) {
                    Some(Some(lapin::Event::Error(e))) => reason = Some(e.to_string()),
                    // No more events: look at the state now and then.
                    Some(None) => listening = false,
                    Some(Some(_)) | None => {}
                }
            } else {
                std::thread::sleep(WATCH_POLL);
            }
            let live = self.live();
            if live.state == BrokerState::Closed {
                return None;
            }
            let open = live
                .connection
                .as_ref()
                .is_some_and(|c| c.status().connected());
            if !open {
                return Some(
                    reason.unwrap_or_else(|| "the connection is no longer open".to_owned()),
                );
            }
            // An error on a connection still open was a channel's.
        }
    }

    /// The connection is lost: `Lost`, and whether to reconnect.
    fn lose(&self, reason: String) -> Option<usize> {
        let (connection, host, node) = {
            let mut live = self.live();
            if live.state == BrokerState::Closed {
                return None;
            }
            live.state = BrokerState::Lost;
            live.reason = Some(reason.clone());
            (live.connection.take(), self.host(&live), live.node)
        };
        self.changed.notify_all();
        tracing::warn!(
            %host,
            %reason,
            reconnect = self.settings.reconnect,
            "lost the connection to the AMQP broker"
        );
        drop(connection);
        self.settings.reconnect.then_some(node)
    }

    /// Tries the nodes in rounds, starting after node `lost`, until one
    /// answers (`Some`, its events) or the link is closed (`None`).
    fn reconnect(&self, lost: usize) -> Option<Events> {
        {
            let mut live = self.live();
            if live.state == BrokerState::Closed {
                return None;
            }
            live.state = BrokerState::Reconnecting;
        }
        self.changed.notify_all();
        let started = Instant::now();
        let mut pause = self.settings.reconnect_initial;
        let n = self.nodes.len();
        let mut round = 0u64;
        loop {
            round += 1;
            for k in 1..=n {
                let at = (lost + k) % n;
                if self.live().state == BrokerState::Closed {
                    return None;
                }
                let node = &self.nodes[at];
                match node.connect(&self.settings) {
                    Ok(connection) => {
                        let events: Events = Box::pin(connection.events_listener());
                        let mut live = self.live();
                        if live.state == BrokerState::Closed {
                            // Dropped: lapin closes it.
                            return None;
                        }
                        live.state = BrokerState::Connected;
                        live.connection = Some(Arc::new(connection));
                        live.node = at;
                        live.generation += 1;
                        live.reason = None;
                        drop(live);
                        self.reconnects.fetch_add(1, Ordering::Relaxed);
                        self.changed.notify_all();
                        tracing::info!(
                            host = %node.host,
                            after = ?started.elapsed(),
                            rounds = round,
                            "reconnected to the AMQP broker"
                        );
                        return Some(events);
                    }
                    Err(e) => {
                        let reason = error_chain(&e);
                        tracing::debug!(round, error = %reason, "reconnecting: this node did not answer");
                        self.live().reason = Some(reason);
                    }
                }
            }
            if self.sleep(jittered(pause, random_unit(&self.jitter))) {
                return None;
            }
            pause = next_pause(pause, self.settings.reconnect_max);
        }
    }

    /// Sleeps `pause` unless the link is closed first (`true`).
    fn sleep(&self, pause: Duration) -> bool {
        let until = Instant::now().checked_add(pause);
        let mut live = self.live();
        loop {
            if live.state == BrokerState::Closed {
                return true;
            }
            let Some(slice) = wait_slice(until) else {
                return false;
            };
            live = self
                .changed
                .wait_timeout(live, slice)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// The pause after a round of attempts that failed: between half of
/// `pause` and all of it, as `unit` (in [0, 1)) says.
fn jittered(pause: Duration, unit: f64) -> Duration {
    let half = pause / 2;
    half + half.mul_f64(unit)
}

/// The pause after the next round: doubled, up to `max`.
fn next_pause(pause: Duration, max: Duration) -> Duration {
    pause.saturating_mul(2).min(max)
}

/// A number in [0, 1) from splitmix64 over `state`.
fn random_unit(state: &AtomicU64) -> f64 {
    const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut z = state
        .fetch_add(GAMMA, Ordering::Relaxed)
        .wrapping_add(GAMMA);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    // The top 53 bits, as a fraction.
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// The supervisor thread: watches the connection, and replaces it when it
/// is lost, until the link is closed (or the connection lost with
/// reconnecting off). Should its own code panic, the link is closed, so
/// that nothing waits for a connection that would never come.
fn supervise(core: &Core, events: Events) {
    let watched = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        watch_and_replace(core, events)
    }));
    if watched.is_err() {
        tracing::error!("the AMQP connection supervisor panicked: the broker connection is closed");
        core.close(false);
    }
}

fn watch_and_replace(core: &Core, mut events: Events) {
    loop {
        let Some(reason) = core.watch(&mut events) else {
            return;
        };
        let Some(lost) = core.lose(reason) else {
            return;
        };
        match core.reconnect(lost) {
            Some(next) => events = next,
            None => return,
        }
    }
}

/// How long to wait next before looking again: until `deadline`, in slices
/// of at most a second; `None` once it has passed.
fn wait_slice(deadline: Option<Instant>) -> Option<Duration> {
    const SLICE: Duration = Duration::from_secs(1);
    match deadline {
        None => Some(SLICE),
        Some(at) => {
            let left = at.saturating_duration_since(Instant::now());
            (!left.is_zero()).then(|| left.min(SLICE))
        }
    }
}

/// An error and its sources, on one line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// How many more returns than [`BrokerBuilder::delivery_limit`] the broker
/// allows before it dead-letters a message on its own: each crash or lost
/// connection of an owner returns its whole prefetch window, and each return
/// counts on the broker, so its limit is only a backstop.
pub const BROKER_LIMIT_MARGIN: u32 = 1000;

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

/// A queue argument's value as RabbitMQ prints it.
fn describe_value(value: &AMQPValue) -> String {
    match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        other => format!("{other:?}"),
    }
}

fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// The URL in `CUSTODY_AMQP_URL`, or the default.
pub(crate) fn url_from_env() -> String {
    std::env::var(URL_VAR)
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| DEFAULT_URL.to_owned())
}

/// Runs `fut` on this thread until it completes or `deadline` passes (`None`).
pub(crate) fn block_until<F: Future>(deadline: Option<Instant>, fut: F) -> Option<F::Output> {
    futures_lite::future::block_on(futures_lite::future::or(async { Some(fut.await) }, async {
        match deadline {
            Some(at) => {
                async_io::Timer::at(at).await;
                None
            }
            None => futures_lite::future::pending().await,
        }
    }))
}

/// `url` with the password of its user info replaced by `***`.
pub(crate) fn mask_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let user_info = &authority[..at];
    let Some(colon) = user_info.find(':') else {
        return url.to_owned();
    };
    format!(
        "{}{}:***{}",
        &url[..scheme_end + 3],
        &user_info[..colon],
        &rest[at..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_pauses_double_up_to_the_cap_with_jitter_between_half_and_all() {
        let ms = Duration::from_millis;
        let mut pause = ms(100);
        let mut pauses = Vec::new();
        for _ in 0..7 {
            pauses.push(pause);
            pause = next_pause(pause, ms(1000));
        }
        assert_eq!(
            pauses,
            [100, 200, 400, 800, 1000, 1000, 1000].map(ms).to_vec()
        );
        assert_eq!(next_pause(Duration::MAX, Duration::MAX), Duration::MAX);
        assert_eq!(jittered(ms(100), 0.0), ms(50));
        assert_eq!(jittered(ms(100), 0.5), ms(75));
        let near_one = jittered(ms(100), 0.999_999);
        assert!(near_one < ms(100) && near_one > ms(99), "{near_one:?}");
        let state = AtomicU64::new(7);
        let draws: Vec<f64> = (0..1000).map(|_| random_unit(&state)).collect();
        assert!(draws.iter().all(|u| (0.0..1.0).contains(u)));
        let low = draws.iter().filter(|&&u| u < 0.5).count();
        assert!(
            (400..600).contains(&low),
            "{low} of 1000 draws below one half"
        );
        let builder = Broker::builder("amqp://h").reconnect_backoff(Duration::ZERO, Duration::ZERO);
        assert_eq!(builder.settings.reconnect_initial, ms(1));
        assert_eq!(builder.settings.reconnect_max, ms(1));
        let builder = Broker::builder("amqp://h").reconnect_backoff(ms(500), ms(100));
        assert_eq!(builder.settings.reconnect_max, ms(500));
    }

    #[test]
    fn passwords_are_masked() {
        assert_eq!(
            mask_password("amqp://guest:s3cret@host:5672/%2f"),
            "amqp://guest:***@host:5672/%2f"
        );
        assert_eq!(mask_password("amqp://host/%2f"), "amqp://host/%2f");
        assert_eq!(mask_password("amqp://user@host"), "amqp://user@host");
        assert_eq!(mask_password("not a url"), "not a url");
        assert_eq!(
            mask_password("amqp://u:p@ss@host?x=@"),
            "amqp://u:***@host?x=@"
        );
        assert_eq!(
            mask_password("amqps://guest:s3cret@host:5671/%2f"),
            "amqps://guest:***@host:5671/%2f"
        );
    }

    #[test]
    fn a_comma_separated_url_names_several_nodes_in_order() {
        assert_eq!(
            split_urls(" amqp://a:1@h1 , amqp://h2,,amqp://h3/%2f "),
            ["amqp://a:1@h1", "amqp://h2", "amqp://h3/%2f"]
        );
        assert_eq!(split_urls("amqp://h1"), ["amqp://h1"]);
        let builder = Broker::builder("amqp://u:hunter2@h1:1,amqp://u:hunter2@h2:2");
        let printed = format!("{builder:?}");
        assert!(
            printed.contains("h1:1") && printed.contains("h2:2"),
            "{printed}"
        );
        assert!(!printed.contains("hunter2"), "{printed}");
    }

    /// Ports on which nothing listens (bound, then closed again).
    fn closed_ports(n: usize) -> Vec<u16> {
        let listeners: Vec<_> = (0..n)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        listeners
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect()
    }

    #[test]
    fn no_node_answering_is_a_typed_error_naming_each_node_tried() {
        let ports = closed_ports(2);
        let urls: Vec<String> = ports
            .iter()
            .map(|port| format!("amqp://user:hunter2@127.0.0.1:{port}/%2f"))
            .collect();
        let err = BrokerBuilder::urls(urls.clone())
            .connect_timeout(Duration::from_secs(2))
            .connect()
            .unwrap_err();
        let BrokerError::NoNodeReachable { attempts } = &err else {
            panic!("expected NoNodeReachable, got {err:?}");
        };
        let hosts: Vec<&str> = attempts
            .iter()
            .map(|attempt| match attempt {
                BrokerError::Unreachable { host, .. } => host.as_str(),
                other => panic!("expected Unreachable, got {other:?}"),
            })
            .collect();
        let expected: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        assert_eq!(hosts, expected);
        let printed = format!("{err} {err:?}");
        assert!(
            expected.iter().all(|h| printed.contains(h.as_str())),
            "{printed}"
        );
        assert!(!printed.contains("hunter2"), "{printed}");
        // The same list through one comma-separated URL.
        let err = Broker::builder(urls.join(","))
            .connect_timeout(Duration::from_secs(2))
            .connect()
            .unwrap_err();
        assert!(
            matches!(&err, BrokerError::NoNodeReachable { attempts } if attempts.len() == 2),
            "{err:?}"
        );
        // One node keeps its own error.
        let err = Broker::builder(urls[0].clone())
            .connect_timeout(Duration::from_secs(2))
            .connect()
            .unwrap_err();
        assert!(matches!(err, BrokerError::Unreachable { .. }), "{err:?}");
    }

    #[test]
    fn an_invalid_url_among_several_is_reported_before_any_node_is_tried() {
        let port = closed_ports(1)[0];
        let err = BrokerBuilder::urls([
            format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
            "amqp://user:hunter2@".to_owned(),
        ])
        .connect()
        .unwrap_err();
        assert!(matches!(err, BrokerError::InvalidUrl { .. }), "{err:?}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = Broker::builder(" , ").connect().unwrap_err();
        assert!(matches!(err, BrokerError::InvalidUrl { .. }), "{err:?}");
    }

    #[cfg(not(feature = "amqps"))]
    #[test]
    fn an_amqps_url_without_the_feature_is_an_invalid_url_naming_it() {
        let err = Broker::connect("amqps://user:hunter2@127.0.0.1:5671/%2f").unwrap_err();
        let BrokerError::InvalidUrl { reason } = &err else {
            panic!("expected InvalidUrl, got {err:?}");
        };
        assert!(reason.contains("`amqps`"), "{reason}");
        let printed = format!("{err} {err:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        let builder = Broker::builder("amqps://user:hunter2@h:5671");
        assert!(!format!("{builder:?}").contains("hunter2"));
    }

    #[test]
    fn an_invalid_url_is_a_typed_error_without_the_password() {
        let err = Broker::connect("amqp://user:hunter2@").unwrap_err();
        assert!(matches!(err, BrokerError::InvalidUrl { .. }), "{err:?}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
