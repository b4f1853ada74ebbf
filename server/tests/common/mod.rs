//! The in-process server harness shared by the QUIC integration tests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rekord::proto::handshake::{ClientConfig, Trees};
use rekord_server::{Config, Identity, Server, ServerError, Store};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The application name every test server serves.
pub const APP: &str = "workshop";

/// A server running in this process on a loopback port.
pub struct Running {
    pub addr: SocketAddr,
    pub identity: Identity,
    pub store: Arc<Store>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), ServerError>>,
}

impl Running {
    /// Starts a server on 127.0.0.1:0 with its data in `dir`.
    pub fn start(dir: &Path) -> Running {
        Running::start_on(dir, "127.0.0.1:0".parse().unwrap())
    }

    /// Starts a server on `addr` with its data in `dir`.
    pub fn start_on(dir: &Path, addr: SocketAddr) -> Running {
        let server = Server::bind(Config {
            listen: addr,
            data: dir.to_path_buf(),
            app: APP.into(),
            ..Default::default()
        })
        .unwrap();
        let addr = server.local_addr().unwrap();
        let identity = server.identity().clone();
        let store = server.store().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(async {
            let _ = stopped.await;
        }));
        Running {
            addr,
            identity,
            store,
            stop,
            task,
        }
    }

    /// Stops the server and waits until its database is closed.
    pub async fn stop(self) {
        let Running {
            store, stop, task, ..
        } = self;
        drop(store);
        stop.send(()).unwrap();
        task.await.unwrap().unwrap();
    }

    /// Issues a token that may read and write every tree.
    pub fn token(&self, name: &str) -> String {
        self.store.issue(name, Trees::All, Trees::All).unwrap()
    }
}

/// A client configuration with a fresh client identity and no pin.
pub fn client(token: &str) -> ClientConfig {
    ClientConfig {
        app: APP.into(),
        client: *uuid::Uuid::new_v4().as_bytes(),
        token: token.into(),
        pinned: None,
        cursor: 0,
        trees: vec![],
        replica: 0,
        history: Vec::new(),
        last_entry: 0,
    }
}

/// Runs `f`, failing the test if it takes longer than `limit`.
pub async fn bounded<F: Future>(limit: Duration, f: F) -> F::Output {
    tokio::time::timeout(limit, f)
        .await
        .expect("the test took too long")
}
