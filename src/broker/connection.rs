//! `Broker`: one AMQP connection per process, and the settings every queue
//! and channel made from it shares.

use std::fmt;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::options::{ConfirmSelectOptions, QueueDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Channel, Connection, ConnectionProperties};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::{BrokerError, QueueMismatch, parse_inequivalent_arg};
use super::remote::RemoteHandle;
use super::serve::{self, Served};
use crate::manager::Manager;
use crate::runtime::Runtime;

/// The environment variable [`Broker::from_env`] reads.
pub const URL_VAR: &str = "CUSTODY_AMQP_URL";
/// The URL [`Broker::from_env`] uses when [`URL_VAR`] is not set.
pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The longest manager name: `custody.<name>.dead` must fit in 255 bytes.
const MAX_NAME: usize = 200;

/// The longest queue name AMQP allows (a short string), in bytes.
pub(crate) const MAX_QUEUE_NAME: usize = 255;

/// What a producer's done queue is named after: `custody.done.<producer-id>`.
pub(crate) const DONE_QUEUE_PREFIX: &str = "custody.done.";

/// The default for [`BrokerBuilder::max_body`]: 16 MiB.
pub const DEFAULT_MAX_BODY: usize = 16 * 1024 * 1024;

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

    /// How many times a message is redelivered after a failed delivery
    /// before it is dead-lettered (default 5, so at most 6 deliveries). It is
    /// an argument of the queue: every process declaring the queue must use
    /// the same value, or the second declaration fails with
    /// [`BrokerError::QueueMismatch`] (which says how to change it).
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
        let mut uris = Vec::with_capacity(self.urls.len());
        for url in &self.urls {
            uris.push(parse_url(url)?);
        }
        if uris.is_empty() {
            return Err(BrokerError::InvalidUrl {
                reason: "no broker URL given".to_owned(),
            });
        }
        // Reconnecting after a lost connection would start here again, from
        // the same URLs and settings, and put a new connection in the `Link`.
        let mut attempts = Vec::with_capacity(uris.len());
        for uri in uris {
            match BrokerBuilder::connect_node(uri, self.settings.clone()) {
                Ok(broker) => return Ok(broker),
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

    /// Connects to one node.
    fn connect_node(mut uri: AMQPUri, settings: Settings) -> Result<Broker, BrokerError> {
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
        let properties = ConnectionProperties::default().with_connection_name(LongString::from(
            format!("custody pid {}", std::process::id()),
        ));
        let connecting = Connection::connect_uri(uri, properties);
        let connection = match block_until(deadline(settings.connect_timeout), connecting) {
            None => {
                return Err(BrokerError::Unreachable {
                    host,
                    source: Box::new(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no connection within {:?}", settings.connect_timeout),
                    )),
                });
            }
            Some(Err(e)) if e.is_amqp_error() => {
                return Err(BrokerError::Refused {
                    host,
                    source: Box::new(e),
                });
            }
            Some(Err(e)) if tls && is_tls_failure(&e) => {
                return Err(BrokerError::Tls {
                    host,
                    source: Box::new(e),
                });
            }
            Some(Err(e)) => {
                return Err(BrokerError::Unreachable {
                    host,
                    source: Box::new(e),
                });
            }
            Some(Ok(connection)) => connection,
        };
        tracing::debug!(%host, "connected to the AMQP broker");
        Ok(Broker {
            link: Arc::new(Link {
                connection,
                host,
                settings,
            }),
        })
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
/// [`Served`] and [`RemoteHandle`] made from it, are dropped. The connection
/// runs its own I/O thread: make one per process and share it.
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

/// The connection and its settings, shared by everything made from it.
pub(crate) struct Link {
    pub(crate) connection: Connection,
    pub(crate) host: String,
    pub(crate) settings: Settings,
}

impl fmt::Debug for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Broker")
            .field("host", &self.link.host)
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

    /// `host:port` of the broker.
    pub fn host(&self) -> &str {
        &self.link.host
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
    /// A deadline `confirm_timeout` from now.
    pub(crate) fn confirm_deadline(&self) -> Option<Instant> {
        deadline(self.settings.confirm_timeout)
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
                host: self.host.clone(),
                source: Box::new(e),
            }),
            None => Err(BrokerError::Timeout {
                what: what(),
                host: self.host.clone(),
                waited: self.settings.confirm_timeout,
            }),
        }
    }

    /// A new channel with publisher confirms on.
    pub(crate) fn confirmed_channel(&self) -> Result<Channel, BrokerError> {
        let channel = self.run(
            || "opening a channel".to_owned(),
            self.connection.create_channel(),
        )?;
        self.run(
            || "turning on publisher confirms".to_owned(),
            channel.confirm_select(ConfirmSelectOptions::default()),
        )?;
        Ok(channel)
    }

    /// Declares the durable quorum queue of manager `name`, single active
    /// consumer, with its delivery limit and its dead-letter queue.
    pub(crate) fn declare_mailbox(&self, channel: &Channel, name: &str) -> Result<(), BrokerError> {
        let dead = dead_queue(name);
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
        let queue = mailbox_queue(name);
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), long_string("quorum"));
        args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(i64::from(self.settings.delivery_limit)),
        );
        args.insert("x-dead-letter-exchange".into(), long_string(""));
        args.insert("x-dead-letter-routing-key".into(), long_string(&dead));
        self.run(
            || format!("declaring queue `{queue}`"),
            channel.queue_declare(ShortString::from(queue.as_str()), durable(), args.clone()),
        )
        .map_err(|e| self.mismatch(e, &queue, &args))?;
        Ok(())
    }

    /// `error` as [`BrokerError::QueueMismatch`] if the broker refused the
    /// declaration of `queue` with `args` because the queue exists with
    /// other arguments (`PRECONDITION_FAILED`); unchanged otherwise.
    fn mismatch(&self, error: BrokerError, queue: &str, args: &FieldTable) -> BrokerError {
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
            host: self.host.clone(),
            argument,
            current,
            requested,
            reply,
        }))
    }
}

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

/// Checks that a manager name makes valid queue names.
pub(crate) fn check_name(name: &str) -> Result<(), BrokerError> {
    if name.is_empty() || name.len() > MAX_NAME || name.contains('\0') {
        Err(BrokerError::InvalidName(name.to_owned()))
    } else {
        Ok(())
    }
}

/// The queue a manager named `name` is served from.
pub(crate) fn mailbox_queue(name: &str) -> String {
    format!("custody.{name}")
}

/// Where messages of `custody.<name>` that could not be handled end.
pub(crate) fn dead_queue(name: &str) -> String {
    format!("custody.{name}.dead")
}

/// The queue a producer's done records arrive in.
pub(crate) fn done_queue(producer: &str) -> String {
    format!("{DONE_QUEUE_PREFIX}{producer}")
}

/// `now + timeout`, or no deadline when that overflows.
pub(crate) fn deadline(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
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
    fn names_must_make_valid_queue_names() {
        assert!(check_name("jobs").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name(&"x".repeat(MAX_NAME + 1)).is_err());
        assert!(dead_queue(&"x".repeat(MAX_NAME)).len() <= 255);
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
