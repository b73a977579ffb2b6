//! A TCP proxy of a test's own between its clients and the broker, to cut
//! connections loudly (both sides closed), silently (a partition: the broker
//! sees the client gone, the client sees nothing) and to let them through
//! again.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

const FORWARD: u8 = 0;
/// Every connection closed on both sides; new ones closed at once.
const DOWN: u8 = 1;
/// The broker's side of every connection closed, the client's side left
/// open and silent (what it sends is read and dropped, so it never blocks);
/// new connections are accepted and held silent the same way.
const SILENT: u8 = 2;

/// One forwarded connection: the client's socket, the broker's (if it was
/// reached), and whether the connection is still open.
struct Link {
    client: TcpStream,
    server: Option<TcpStream>,
    open: Arc<AtomicBool>,
}

#[derive(Default)]
struct Shared {
    mode: AtomicU8,
    closed: AtomicBool,
    links: Mutex<Vec<Link>>,
    accepted: AtomicUsize,
    refused: AtomicUsize,
}

/// The proxy. Dropping it closes every connection through it.
pub struct Proxy {
    /// The broker's URL with its authority replaced by the proxy's.
    pub url: String,
    port: u16,
    shared: Arc<Shared>,
}

impl Proxy {
    /// A proxy to the broker at `url` (the tests' broker with
    /// [`Proxy::start`]).
    pub fn to(url: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (upstream, proxied) = super::through_proxy(url, port);
        let shared = Arc::new(Shared::default());
        let accepting = Arc::clone(&shared);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if accepting.closed.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                accepting.accept(client, &upstream);
            }
        });
        Proxy {
            url: proxied,
            port,
            shared,
        }
    }

    /// A proxy to the tests' broker.
    pub fn start() -> Proxy {
        Proxy::to(&super::url())
    }

    /// Closes every connection on both sides, and refuses new ones until
    /// [`Proxy::restore`]. Returns how many connections were open.
    pub fn cut(&self) -> usize {
        self.shared.mode.store(DOWN, Ordering::SeqCst);
        let links = std::mem::take(&mut *self.shared.links.lock().unwrap());
        let mut open = 0;
        for link in links {
            if link.open.load(Ordering::SeqCst) {
                open += 1;
            }
            let _ = link.client.shutdown(Shutdown::Both);
            if let Some(server) = link.server {
                let _ = server.shutdown(Shutdown::Both);
            }
        }
        open
    }

    /// A partition: closes the broker's side of every connection and leaves
    /// the clients' sides open and silent, new connections too, until
    /// [`Proxy::restore`].
    pub fn silence(&self) {
        self.shared.mode.store(SILENT, Ordering::SeqCst);
        for link in self.shared.links.lock().unwrap().iter_mut() {
            if let Some(server) = link.server.take() {
                let _ = server.shutdown(Shutdown::Both);
            }
        }
    }

    /// New connections go through again. Connections held silent are closed
    /// (as a healed network answers a connection the broker forgot with a
    /// reset).
    pub fn restore(&self) {
        let mut links = self.shared.links.lock().unwrap();
        links.retain(|link| {
            if link.server.is_none() {
                let _ = link.client.shutdown(Shutdown::Both);
                false
            } else {
                true
            }
        });
        self.shared.mode.store(FORWARD, Ordering::SeqCst);
    }

    pub fn is_down(&self) -> bool {
        self.shared.mode.load(Ordering::SeqCst) != FORWARD
    }

    /// Connections forwarded to the broker so far.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections refused (or held silent) while down.
    pub fn refused(&self) -> usize {
        self.shared.refused.load(Ordering::SeqCst)
    }
}

impl Shared {
    fn accept(self: &Arc<Self>, client: TcpStream, upstream: &str) {
        match self.mode.load(Ordering::SeqCst) {
            DOWN => {
                self.refused.fetch_add(1, Ordering::SeqCst);
                let _ = client.shutdown(Shutdown::Both);
                return;
            }
            SILENT => {
                self.refused.fetch_add(1, Ordering::SeqCst);
                let open = Arc::new(AtomicBool::new(true));
                self.links.lock().unwrap().push(Link {
                    client: client.try_clone().unwrap(),
                    server: None,
                    open: Arc::clone(&open),
                });
                std::thread::spawn(move || drain(client, open));
                return;
            }
            _ => {}
        }
        let Ok(server) = TcpStream::connect(upstream) else {
            let _ = client.shutdown(Shutdown::Both);
            return;
        };
        self.accepted.fetch_add(1, Ordering::SeqCst);
        let open = Arc::new(AtomicBool::new(true));
        self.links.lock().unwrap().push(Link {
            client: client.try_clone().unwrap(),
            server: Some(server.try_clone().unwrap()),
            open: Arc::clone(&open),
        });
        // Down: the broker's bytes to the client, until either side ends.
        {
            let (from, to, shared, open) = (
                server.try_clone().unwrap(),
                client.try_clone().unwrap(),
                Arc::clone(self),
                Arc::clone(&open),
            );
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut &from, &mut &to);
                if shared.mode.load(Ordering::SeqCst) != SILENT {
                    open.store(false, Ordering::SeqCst);
                    let _ = to.shutdown(Shutdown::Both);
                }
            });
        }
        // Up: the client's bytes to the broker; once silent they are read
        // and dropped, so that the client never blocks on a write.
        let shared = Arc::clone(self);
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            let (mut from, mut to) = (&client, &server);
            while let Ok(read) = from.read(&mut buf) {
                if read == 0 {
                    break;
                }
                match shared.mode.load(Ordering::SeqCst) {
                    FORWARD => {
                        if to.write_all(&buf[..read]).is_err()
                            && shared.mode.load(Ordering::SeqCst) != SILENT
                        {
                            break;
                        }
                    }
                    SILENT => {}
                    _ => break,
                }
            }
            open.store(false, Ordering::SeqCst);
            let _ = server.shutdown(Shutdown::Both);
            if shared.mode.load(Ordering::SeqCst) != SILENT {
                let _ = client.shutdown(Shutdown::Both);
            }
        });
    }
}

/// Reads and drops what a silenced client sends, until it closes.
fn drain(client: TcpStream, open: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(read) = (&client).read(&mut buf) {
        if read == 0 {
            break;
        }
    }
    open.store(false, Ordering::SeqCst);
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.shared.closed.store(true, Ordering::SeqCst);
        // Wakes the accepting thread, which then ends.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}
