//! Red team of the built-in sync driver with in-process streams it can count: streams that
//! stop carrying bytes (both ways, or only the client's writes) make the client give up on
//! them and connect again, many times; each stream given up ends (no reader or writer task
//! keeps it), closing the database ends the last one within a bound, and every write
//! reaches the server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rekord::net::{ByteStream, Connect, NetError, WireFuture};
use rekord::proto::handshake::Trees;
use rekord::{Db, Error, SyncConfig};
use rekord_server::{Config, LocalConnector, Server};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const APP: &str = "workshop";
const LIMIT: Duration = Duration::from_secs(60);

#[rekord::record(tree = "parts", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub name: String,
    pub qty: u32,
}

/// Streams numbered from 0 in the order opened; those below `stall_below` carry nothing
/// more: neither way (`mode` 0), or only the client's writes (`mode` 1).
struct Counting {
    server: LocalConnector,
    opened: Arc<AtomicUsize>,
    alive: Arc<AtomicUsize>,
    stall_below: Arc<AtomicUsize>,
    /// 0: stall reads and writes; 1: writes only.
    mode: Arc<AtomicUsize>,
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

struct Served {
    connector: Arc<Counting>,
    token: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), rekord_server::ServerError>>,
}

fn serve(dir: &std::path::Path) -> Served {
    let server = Server::bind(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data: dir.to_path_buf(),
        app: APP.into(),
        ..Default::default()
    })
    .unwrap();
    let token = server.store().issue("all", Trees::All, Trees::All).unwrap();
    let connector = Arc::new(Counting {
        server: server.local_connector(),
        opened: Arc::new(AtomicUsize::new(0)),
        alive: Arc::new(AtomicUsize::new(0)),
        stall_below: Arc::new(AtomicUsize::new(0)),
        mode: Arc::new(AtomicUsize::new(0)),
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));
    Served {
        connector,
        token,
        stop,
        task,
    }
}

impl Served {
    fn config(&self) -> SyncConfig {
        SyncConfig::new("0.0.0.0:0".parse().unwrap(), APP, &self.token)
            .connector(self.connector.clone())
            .timeout(Duration::from_millis(600))
            .idle_timeout(Duration::from_millis(400))
            .retry(
                rekord::Retry::default()
                    .initial(Duration::from_millis(10))
                    .max(Duration::from_millis(50)),
            )
    }
    fn alive(&self) -> usize {
        self.connector.alive.load(Ordering::SeqCst)
    }
    fn opened(&self) -> usize {
        self.connector.opened.load(Ordering::SeqCst)
    }
    /// Every stream open now stops carrying bytes.
    fn stall_all(&self) {
        self.connector
            .stall_below
            .store(self.opened(), Ordering::SeqCst);
    }
    async fn stop(self) {
        self.stop.send(()).unwrap();
        self.task.await.unwrap().unwrap();
    }
}

async fn until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn caught_up(db: &Db) -> bool {
    db.sync_status()
        .is_some_and(|s| s.online && s.caught_up && s.outbox == 0)
}

async fn create(parts: &rekord::Tree<Part>, name: &str) {
    let start = Instant::now();
    loop {
        match parts.create(&Part {
            name: name.into(),
            qty: 1,
        }) {
            Ok(_) => return,
            Err(Error::IdsExhausted) if start.elapsed() < LIMIT => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => panic!("create: {e}"),
        }
    }
}

/// Closes `db` on a blocking thread, failing if it takes longer than `limit`.
async fn close_bounded(db: Db, limit: Duration) -> Duration {
    let start = Instant::now();
    tokio::time::timeout(limit, tokio::task::spawn_blocking(move || drop(db)))
        .await
        .expect("closing the database hangs")
        .unwrap();
    start.elapsed()
}

async fn stalled_streams_are_given_up_and_end(mode: usize) {
    let dir = tempfile::tempdir().unwrap();
    let served = serve(&dir.path().join("server"));
    served.connector.mode.store(mode, Ordering::SeqCst);
    let db = Db::open_synced(dir.path().join("a.rekord"), served.config()).unwrap();
    until("caught up", LIMIT, || caught_up(&db)).await;
    let parts = db.tree::<Part>().unwrap();
    let mut most_alive = 0;
    for round in 0..15 {
        let opened = served.opened();
        served.stall_all();
        create(&parts, &format!("r{round}")).await;
        // The client gives up on the stalled stream and connects again.
        let start = Instant::now();
        while !(served.opened() > opened && caught_up(&db)) {
            most_alive = most_alive.max(served.alive());
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "round {round}: no new session in 20 s: {:?}",
                db.sync_status()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        until(
            &format!(
                "round {round}: only the new stream alive ({} alive)",
                served.alive()
            ),
            Duration::from_secs(5),
            || served.alive() == 1,
        )
        .await;
    }
    eprintln!(
        "mode {mode}: {} streams opened, at most {most_alive} alive at once",
        served.opened()
    );
    assert!(most_alive <= 2, "{most_alive} streams alive at once");
    // One more stall, and the database closes while its stream carries nothing.
    served.stall_all();
    create(&parts, "last").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(parts);
    let took = close_bounded(db, Duration::from_secs(10)).await;
    eprintln!("mode {mode}: close over a stalled stream took {took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    until(
        "no stream alive after the close",
        Duration::from_secs(5),
        || served.alive() == 0,
    )
    .await;
    // Everything reached the server.
    served.connector.stall_below.store(0, Ordering::SeqCst);
    let db = Db::open_synced(dir.path().join("a.rekord"), served.config()).unwrap();
    until("A's last write sent", LIMIT, || caught_up(&db)).await;
    let fresh = Db::open_synced(dir.path().join("b.rekord"), served.config()).unwrap();
    until("B caught up", LIMIT, || caught_up(&fresh)).await;
    let parts = fresh.tree::<Part>().unwrap();
    let mut names: Vec<String> = parts
        .keys()
        .unwrap()
        .into_iter()
        .map(|k| parts.get(k).unwrap().name)
        .collect();
    names.sort();
    let mut want: Vec<String> = (0..15).map(|r| format!("r{r}")).collect();
    want.push("last".into());
    want.sort();
    assert_eq!(names, want);
    drop(parts);
    close_bounded(db, Duration::from_secs(10)).await;
    close_bounded(fresh, Duration::from_secs(10)).await;
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_that_carry_nothing_are_given_up_and_end() {
    stalled_streams_are_given_up_and_end(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_that_take_no_writes_are_given_up_and_end() {
    stalled_streams_are_given_up_and_end(1).await;
}
