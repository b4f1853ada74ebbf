//! A loopback UDP proxy that damages traffic between QUIC clients and a server: it drops,
//! delays, duplicates and reorders datagrams and cuts clients off for a while, at random
//! from a seed (reproducible), until told to behave.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;

/// How badly the proxy behaves (probabilities per datagram, in parts per thousand).
#[derive(Clone, Copy, Debug)]
pub struct Faults {
    pub drop: u64,
    pub duplicate: u64,
    /// Delay (and so reorder) a datagram by up to `max_delay`.
    pub delay: u64,
    pub max_delay: Duration,
    /// Cut one client off entirely for up to `max_cut` (per datagram chance).
    pub cut: u64,
    pub max_cut: Duration,
}

impl Faults {
    pub const NONE: Faults = Faults {
        drop: 0,
        duplicate: 0,
        delay: 0,
        max_delay: Duration::ZERO,
        cut: 0,
        max_cut: Duration::ZERO,
    };
}

/// Counters of what the proxy did.
#[derive(Default, Debug)]
pub struct Stats {
    pub forwarded: AtomicU64,
    pub dropped: AtomicU64,
    pub duplicated: AtomicU64,
    pub delayed: AtomicU64,
    pub cuts: AtomicU64,
}

struct Shared {
    faults: Mutex<Faults>,
    rng: Mutex<u64>,
    stats: Stats,
    stop: AtomicBool,
    /// Drop everything (the client is offline) while set.
    blocked: AtomicBool,
}

impl Shared {
    fn roll(&self, per_mille: u64) -> bool {
        per_mille > 0 && self.below(1000) < per_mille
    }
    fn below(&self, n: u64) -> u64 {
        let mut s = self.rng.lock().unwrap();
        *s ^= *s >> 12;
        *s ^= *s << 25;
        *s ^= *s >> 27;
        s.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
    fn faults(&self) -> Faults {
        *self.faults.lock().unwrap()
    }
}

/// The proxy; runs on the given tokio runtime until dropped.
pub struct Proxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Proxy {
    /// Listens on 127.0.0.1:0 and forwards to `server`.
    pub async fn start(server: SocketAddr, seed: u64, faults: Faults) -> Proxy {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = front.local_addr().unwrap();
        let shared = Arc::new(Shared {
            faults: Mutex::new(faults),
            rng: Mutex::new(seed | 1),
            stats: Stats::default(),
            stop: AtomicBool::new(false),
            blocked: AtomicBool::new(false),
        });
        let sh = shared.clone();
        tokio::spawn(async move {
            // Client address -> (upstream socket, cut off until).
            let mut clients: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
            let cut_until: Arc<Mutex<HashMap<SocketAddr, tokio::time::Instant>>> = Arc::default();
            let mut buf = vec![0u8; 65536];
            while !sh.stop.load(Ordering::Relaxed) {
                let Ok((len, from)) = front.recv_from(&mut buf).await else {
                    break;
                };
                let up = match clients.get(&from) {
                    Some(up) => up.clone(),
                    None => {
                        let up = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
                        up.connect(server).await.unwrap();
                        clients.insert(from, up.clone());
                        // Server -> client direction.
                        let (front, sh, up2, cuts) =
                            (front.clone(), sh.clone(), up.clone(), cut_until.clone());
                        tokio::spawn(async move {
                            let mut buf = vec![0u8; 65536];
                            while let Ok(len) = up2.recv(&mut buf).await {
                                if sh.stop.load(Ordering::Relaxed) {
                                    break;
                                }
                                let data = buf[..len].to_vec();
                                let (front, sh2, cuts2) = (front.clone(), sh.clone(), cuts.clone());
                                forward(sh2, cuts2, from, data, move |d| {
                                    let front = front.clone();
                                    async move {
                                        let _ = front.send_to(&d, from).await;
                                    }
                                });
                            }
                        });
                        up
                    }
                };
                let data = buf[..len].to_vec();
                forward(sh.clone(), cut_until.clone(), from, data, move |d| {
                    let up = up.clone();
                    async move {
                        let _ = up.send(&d).await;
                    }
                });
            }
        });
        Proxy { addr, shared }
    }

    /// Changes the faults from now on.
    pub fn set(&self, faults: Faults) {
        *self.shared.faults.lock().unwrap() = faults;
    }

    /// Drops every datagram (both ways) while `blocked`: the clients behind it are offline.
    pub fn block(&self, blocked: bool) {
        self.shared.blocked.store(blocked, Ordering::Relaxed);
    }

    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

/// Sends one datagram of client `client`'s flow through the faults.
fn forward<F, Fut>(
    sh: Arc<Shared>,
    cuts: Arc<Mutex<HashMap<SocketAddr, tokio::time::Instant>>>,
    client: SocketAddr,
    data: Vec<u8>,
    send: F,
) where
    F: Fn(Vec<u8>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    if sh.blocked.load(Ordering::Relaxed) {
        sh.stats.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let f = sh.faults();
    let now = tokio::time::Instant::now();
    {
        let mut cuts = cuts.lock().unwrap();
        if cuts.get(&client).is_some_and(|until| *until > now) {
            sh.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if sh.roll(f.cut) {
            let ms = sh.below(f.max_cut.as_millis().max(1) as u64);
            cuts.insert(client, now + Duration::from_millis(ms));
            sh.stats.cuts.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
    if sh.roll(f.drop) {
        sh.stats.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let copies = if sh.roll(f.duplicate) {
        sh.stats.duplicated.fetch_add(1, Ordering::Relaxed);
        2
    } else {
        1
    };
    let delay = if sh.roll(f.delay) {
        sh.stats.delayed.fetch_add(1, Ordering::Relaxed);
        Duration::from_micros(sh.below(f.max_delay.as_micros().max(1) as u64))
    } else {
        Duration::ZERO
    };
    sh.stats.forwarded.fetch_add(1, Ordering::Relaxed);
    let send = Arc::new(send);
    for _ in 0..copies {
        let (send, data) = (send.clone(), data.clone());
        if delay.is_zero() {
            tokio::spawn(async move { send(data).await });
        } else {
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                send(data).await;
            });
        }
    }
}
