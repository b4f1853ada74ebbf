//! A server in this process that replicas reach through its in-process streams
//! ([`Server::local_connector`]) wrapped in a connector of the test's: one that counts and can
//! stall its streams ([`Counting`]), or one that takes the simulated network down.
#![allow(dead_code)]

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use rekord::SyncConfig;
use rekord::net::{ByteStream, Connect, NetError, WireFuture};
use rekord::proto::handshake::Trees;
use rekord_server::{Config, LocalConnector, Server, ServerError};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A server serving `app` from a task of the current runtime, its connector, and a token
/// for every tree.
pub struct InProcess<C> {
    pub connector: Arc<C>,
    pub token: String,
    app: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), ServerError>>,
}

/// Starts a server with its data in `dir`; `wrap` makes the replicas' connector from the
/// server's own.
pub fn serve<C>(dir: &Path, app: &str, wrap: impl FnOnce(LocalConnector) -> C) -> InProcess<C> {
    let server = Server::bind(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data: dir.to_path_buf(),
        app: app.into(),
        ..Default::default()
    })
    .unwrap();
    let token = server.store().issue("all", Trees::All, Trees::All).unwrap();
    let connector = Arc::new(wrap(server.local_connector()));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));
    InProcess {
        connector,
        token,
        app: app.into(),
        stop,
        task,
    }
}

impl<C: Connect + 'static> InProcess<C> {
    /// A replica's configuration reaching this server through the connector (no address).
    pub fn base_config(&self) -> SyncConfig {
        SyncConfig::new("0.0.0.0:0".parse().unwrap(), &self.app, &self.token)
            .connector(self.connector.clone())
    }

    /// Stops the server and waits until it ended cleanly.
    pub async fn stop(self) {
        self.stop.send(()).unwrap();
        self.task.await.unwrap().unwrap();
    }
}

/// The server's connector, counting the streams it opened and those still alive (a stream
/// is gone once both its halves are dropped, which is when the server's session sees its
/// end). Streams are numbered from 0 in the order opened; those below `stall_below` carry
/// nothing more: neither way (`mode` 0), or only the client's writes (`mode` 1).
pub struct Counting {
    server: LocalConnector,
    pub opened: AtomicUsize,
    pub alive: Arc<AtomicUsize>,
    pub stall_below: Arc<AtomicUsize>,
    /// 0: stall reads and writes; 1: writes only.
    pub mode: Arc<AtomicUsize>,
}

impl Counting {
    /// Counts the streams of `server`, stalling none.
    pub fn new(server: LocalConnector) -> Self {
        Counting {
            server,
            opened: AtomicUsize::new(0),
            alive: Arc::new(AtomicUsize::new(0)),
            stall_below: Arc::new(AtomicUsize::new(0)),
            mode: Arc::new(AtomicUsize::new(0)),
        }
    }
}

impl InProcess<Counting> {
    /// Streams alive now.
    pub fn alive(&self) -> usize {
        self.connector.alive.load(Ordering::SeqCst)
    }

    /// Streams opened so far.
    pub fn opened(&self) -> usize {
        self.connector.opened.load(Ordering::SeqCst)
    }

    /// Every stream open now stops carrying bytes.
    pub fn stall_all(&self) {
        self.connector
            .stall_below
            .store(self.opened(), Ordering::SeqCst);
    }
}

struct Counted {
    inner: tokio::io::DuplexStream,
    index: usize,
    alive: Arc<AtomicUsize>,
    stall_below: Arc<AtomicUsize>,
    mode: Arc<AtomicUsize>,
}

impl Counted {
    fn stalled(&self) -> bool {
        self.index < self.stall_below.load(Ordering::SeqCst)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.alive.fetch_sub(1, Ordering::SeqCst);
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.stalled() && self.mode.load(Ordering::SeqCst) == 0 {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.stalled() {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.stalled() {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Connect for Counting {
    fn connect(&self) -> WireFuture<'static, Result<Box<dyn ByteStream>, NetError>> {
        let stream = self
            .server
            .connect()
            .map(|inner| {
                let index = self.opened.fetch_add(1, Ordering::SeqCst);
                self.alive.fetch_add(1, Ordering::SeqCst);
                Box::new(Counted {
                    inner,
                    index,
                    alive: self.alive.clone(),
                    stall_below: self.stall_below.clone(),
                    mode: self.mode.clone(),
                }) as Box<dyn ByteStream>
            })
            .map_err(|e| NetError::Closed(e.to_string()));
        Box::pin(async move { stream })
    }
}
