//! What the server allows one client, one address and everyone together: the bounds that
//! keep it serving while strangers attack it.
//!
//! | Attack | Bound | Answer |
//! |---|---|---|
//! | many connections | [`Limits::max_connections`] in total, [`Limits::max_connections_per_address`] per source IP | the QUIC connection is refused before any TLS work (`CONNECTION_REFUSED`) |
//! | a burst of handshakes (each costs CPU time) | [`Limits::handshakes_per_second_per_address`] | refused as above |
//! | handshakes that never finish, connections that never say hello | [`Limits::max_handshakes`] in flight; [`Limits::hello_timeout_secs`] for the QUIC handshake plus the hello | refused as above; closed with [`CLOSE_LIMITED`](rekord::net::CLOSE_LIMITED) |
//! | forged source addresses | above half of [`Limits::max_handshakes`], unvalidated addresses must answer a QUIC retry first | a retry packet |
//! | a big frame before the hello | [`MAX_HELLO`] (1 MiB) | closed as a protocol error |
//! | a frame announced large and sent slowly | [`Limits::frame_timeout_secs`] from its first byte to its last | closed with `CLOSE_LIMITED` |
//! | many large frames at once | [`Limits::frame_memory_mib`] for all frames in transit beyond their first MiB (a frame's whole share is taken at once, when its length is known, at most the whole memory; one token's sessions hold at most a quarter of it, or one frame's 15 MiB if more; the wait keeps its place in line and does not count against the frame's time to arrive) | the reader waits (QUIC flow control holds the sender), then as above |
//! | a client that reads nothing | its answers and its refusal are written within [`Limits::frame_timeout_secs`] and [`REFUSAL_TIME`](crate::REFUSAL_TIME); no QUIC datagrams are accepted | closed with `CLOSE_LIMITED` |
//! | a flood of requests | [`Limits::requests_per_second`] per token (all its sessions together) | answers are delayed; nothing is refused |
//! | token guessing | [`Limits::auth_failures_per_minute`] per source IP; its hellos are checked one at a time, each after the last refusal was counted | further connections from it are refused until its allowance refills |
//! | pushes to clients that read nothing | each push and its bytes are shared by every session (encoded once); a write waits at most `PUSH_WRITE_TIMEOUT` | closed with `CLOSE_LAGGED` |
//! | a new replica per hello | [`Limits::replicas_per_token`] | [`Refusal::TooManyReplicas`](rekord::proto::Refusal::TooManyReplicas) |
//! | schema uploads | [`Limits::max_schemas`] on the server | the upload is refused (`RemoteError::Invalid`) |
//!
//! Memory of one session is bounded by one frame in transit
//! ([`MAX_FRAME`](rekord::proto::MAX_FRAME), 16 MiB, of which all but the first MiB comes out
//! of the shared [`Limits::frame_memory_mib`]) plus QUIC's windows ([`RECEIVE_WINDOW`],
//! [`SEND_WINDOW`]); every refusal is logged, at most once a second per kind with a count.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::ServerError;

/// Bytes the server accepts in flight on one connection (QUIC connection flow control).
pub const RECEIVE_WINDOW: u32 = 4 << 20;
/// Bytes the server buffers unsent for one connection.
pub const SEND_WINDOW: u64 = 4 << 20;
/// The part of a frame in transit that needs no share of [`Limits::frame_memory_mib`].
pub const FREE_FRAME_BYTES: usize = 1 << 20;
/// The most MiB one frame takes of [`Limits::frame_memory_mib`] (16 MiB less the free
/// first MiB).
pub const FRAME_SHARE_MAX: u32 = 15;

/// The largest frame accepted before a client's hello is accepted (a hello is a few KiB;
/// with a long subscription, some hundreds): a stranger's frames never take a share of
/// [`Limits::frame_memory_mib`].
pub const MAX_HELLO: u32 = 1 << 20;
/// Most source addresses a per-address allowance remembers (the oldest are forgotten).
const REMEMBERED: usize = 65_536;

/// The server's bounds (the `[limits]` table of its configuration); every field has a
/// default, printed by `rekord-server run --help`.
///
/// ```toml
/// [limits]
/// max_connections = 1024
/// max_connections_per_address = 64
/// requests_per_second = 1000
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Most connections at once, handshaking or in session (default 1024).
    pub max_connections: u32,
    /// Most connections at once from one IP address (default 64).
    pub max_connections_per_address: u32,
    /// Most connections at once that have not yet been accepted by their hello (default
    /// 128).
    pub max_handshakes: u32,
    /// New connections per second one IP address may open, in bursts of as many (default
    /// 8): a handshake costs the server real CPU time.
    pub handshakes_per_second_per_address: u32,
    /// Seconds a connection has for its QUIC handshake and its hello (default 10).
    pub hello_timeout_secs: u32,
    /// Seconds a frame may take from its first byte to its last (default 30; a full 16 MiB
    /// frame needs about 4.5 Mbit/s).
    pub frame_timeout_secs: u32,
    /// MiB shared by all frames in transit beyond the first MiB of each; one token's
    /// sessions hold at most a quarter of it (default 256).
    pub frame_memory_mib: u32,
    /// Requests per second one token's sessions get answered together; more wait (default
    /// 1000, in bursts of as many).
    pub requests_per_second: u32,
    /// Hellos with a refused token one IP address may send per minute; beyond them its
    /// connections are refused until the allowance refills (default 10).
    pub auth_failures_per_minute: u32,
    /// Most replicas (client identities) one token may register (default 10,000).
    pub replicas_per_token: u32,
    /// Most schemas (tree and version) the server stores (default 65,536).
    pub max_schemas: u32,
    /// Addresses the per-address limits do not apply to (default `127.0.0.1` and `::1`:
    /// processes on the server's own machine, like fail2ban's `ignoreip`). The limits in
    /// total still do. Empty it to treat every address alike, and do so when a relay or
    /// proxy on the server's machine forwards remote clients.
    pub trusted: Vec<IpAddr>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_connections_per_address: 64,
            max_handshakes: 128,
            handshakes_per_second_per_address: 8,
            hello_timeout_secs: 10,
            frame_timeout_secs: 30,
            frame_memory_mib: 256,
            requests_per_second: 1000,
            auth_failures_per_minute: 10,
            replicas_per_token: 10_000,
            max_schemas: 65_536,
            trusted: vec![
                IpAddr::from([127, 0, 0, 1]),
                IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
            ],
        }
    }
}

impl Limits {
    /// Each limit with its name, value and meaning, for `--help` and the startup log.
    pub fn describe(&self) -> Vec<(&'static str, u32, &'static str)> {
        vec![
            (
                "max_connections",
                self.max_connections,
                "connections at once, in total",
            ),
            (
                "max_connections_per_address",
                self.max_connections_per_address,
                "connections at once from one IP address",
            ),
            (
                "max_handshakes",
                self.max_handshakes,
                "connections at once not yet past their hello",
            ),
            (
                "handshakes_per_second_per_address",
                self.handshakes_per_second_per_address,
                "new connections per second from one IP address",
            ),
            (
                "hello_timeout_secs",
                self.hello_timeout_secs,
                "seconds for the QUIC handshake plus the hello",
            ),
            (
                "frame_timeout_secs",
                self.frame_timeout_secs,
                "seconds from a frame's first byte to its last",
            ),
            (
                "frame_memory_mib",
                self.frame_memory_mib,
                "MiB shared by frames in transit beyond 1 MiB each",
            ),
            (
                "requests_per_second",
                self.requests_per_second,
                "requests answered per second per token (more wait)",
            ),
            (
                "auth_failures_per_minute",
                self.auth_failures_per_minute,
                "refused tokens per minute per IP address before it is refused",
            ),
            (
                "replicas_per_token",
                self.replicas_per_token,
                "replicas (client identities) one token may register",
            ),
            (
                "max_schemas",
                self.max_schemas,
                "schemas (tree and version) the server stores",
            ),
        ]
    }

    /// Every limit must be at least 1 (a zero would refuse everyone).
    pub fn validate(&self) -> Result<(), ServerError> {
        for (name, value, _) in self.describe() {
            if value == 0 {
                return Err(ServerError::Config(format!(
                    "limits.{name} must be at least 1"
                )));
            }
        }
        Ok(())
    }

    /// [`Limits::hello_timeout_secs`] as a duration.
    pub fn hello_timeout(&self) -> Duration {
        Duration::from_secs(self.hello_timeout_secs.into())
    }

    /// [`Limits::frame_timeout_secs`] as a duration.
    pub fn frame_timeout(&self) -> Duration {
        Duration::from_secs(self.frame_timeout_secs.into())
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Why a new connection is refused before its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    /// [`Limits::max_connections`].
    Total,
    /// [`Limits::max_connections_per_address`].
    Address,
    /// [`Limits::max_handshakes`].
    Handshakes,
    /// [`Limits::auth_failures_per_minute`].
    Guessing,
    /// [`Limits::handshakes_per_second_per_address`].
    Rate,
}

impl Full {
    pub(crate) fn what(self) -> &'static str {
        match self {
            Full::Total => "the server is at max_connections",
            Full::Address => "the address is at max_connections_per_address",
            Full::Handshakes => "the server is at max_handshakes",
            Full::Guessing => "the address sent too many refused tokens (auth_failures_per_minute)",
            Full::Rate => {
                "the address opens connections too fast (handshakes_per_second_per_address)"
            }
        }
    }
}

#[derive(Default)]
struct Counts {
    total: u32,
    handshakes: u32,
    per_address: HashMap<IpAddr, u32>,
}

/// Counts connections (total, per address, in handshake) and refuses what is over a limit.
pub(crate) struct Gate {
    limits: Limits,
    counts: Mutex<Counts>,
    /// [`Limits::auth_failures_per_minute`].
    guesses: Mutex<PerAddress>,
    /// [`Limits::handshakes_per_second_per_address`].
    arrivals: Mutex<PerAddress>,
    /// One token check at a time per address ([`Gate::token_turn`]).
    turns: Mutex<HashMap<IpAddr, Arc<Mutex<()>>>>,
}

/// A connection's place under the [`Gate`]; freed when dropped.
pub(crate) struct Ticket {
    gate: Arc<Gate>,
    ip: IpAddr,
    handshaking: bool,
}

impl Gate {
    pub(crate) fn new(limits: Limits) -> Arc<Self> {
        let per_minute = f64::from(limits.auth_failures_per_minute);
        let per_second = f64::from(limits.handshakes_per_second_per_address);
        Arc::new(Self {
            counts: Mutex::new(Counts::default()),
            guesses: Mutex::new(PerAddress::new(per_minute / 60.0, per_minute)),
            arrivals: Mutex::new(PerAddress::new(per_second, per_second)),
            turns: Mutex::new(HashMap::new()),
            limits,
        })
    }

    /// Whether handshakes in flight are above half their bound (new connections from
    /// addresses not yet validated must answer a QUIC retry first).
    pub(crate) fn busy(&self) -> bool {
        lock(&self.counts).handshakes > self.limits.max_handshakes / 2
    }

    fn trusted(&self, ip: IpAddr) -> bool {
        self.limits.trusted.contains(&ip)
    }

    /// A place for a new connection from `ip`, or why there is none.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Ticket, Full> {
        // An IPv4 client of a dual-stack server arrives as `::ffff:a.b.c.d`.
        let ip = ip.to_canonical();
        let now = Instant::now();
        let trusted = self.trusted(ip);
        if !trusted && lock(&self.guesses).locked(ip, now) {
            return Err(Full::Guessing);
        }
        let mut counts = lock(&self.counts);
        if !trusted
            && counts.per_address.get(&ip).copied().unwrap_or(0)
                >= self.limits.max_connections_per_address
        {
            return Err(Full::Address);
        }
        if !trusted && !lock(&self.arrivals).take(ip, now) {
            return Err(Full::Rate);
        }
        if counts.total >= self.limits.max_connections {
            return Err(Full::Total);
        }
        if counts.handshakes >= self.limits.max_handshakes {
            return Err(Full::Handshakes);
        }
        *counts.per_address.entry(ip).or_default() += 1;
        counts.total += 1;
        counts.handshakes += 1;
        Ok(Ticket {
            gate: self.clone(),
            ip,
            handshaking: true,
        })
    }

    /// The lock an untrusted address's token checks take turns with (`None`: trusted).
    /// Holding it from [`Gate::guessing`] to [`Gate::refused_token`] makes the allowance
    /// exact: hellos sent at once are checked one after the other, each after the last
    /// one's refusal was counted (a check takes microseconds, so good hellos barely wait).
    pub(crate) fn token_turn(&self, ip: IpAddr) -> Option<Arc<Mutex<()>>> {
        let ip = ip.to_canonical();
        if self.trusted(ip) {
            return None;
        }
        let mut turns = lock(&self.turns);
        if turns.len() >= 1024 {
            turns.retain(|_, turn| Arc::strong_count(turn) > 1);
        }
        Some(turns.entry(ip).or_default().clone())
    }

    /// Whether `ip` used up its allowance of refused tokens (its hello is then refused
    /// unchecked). Only refused tokens count ([`Gate::refused_token`]); call both while
    /// holding the address's [`Gate::token_turn`].
    pub(crate) fn guessing(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        !self.trusted(ip) && lock(&self.guesses).locked(ip, Instant::now())
    }

    /// Notes a hello from `ip` refused for its token.
    pub(crate) fn refused_token(&self, ip: IpAddr) {
        let ip = ip.to_canonical();
        if !self.trusted(ip) {
            lock(&self.guesses).charge(ip, Instant::now());
        }
    }

    /// Connections now: `(total, in handshake)`.
    #[cfg(test)]
    fn counts(&self) -> (u32, u32) {
        let c = lock(&self.counts);
        (c.total, c.handshakes)
    }
}

impl Ticket {
    /// The connection said an accepted hello: it no longer counts as a handshake.
    pub(crate) fn established(&mut self) {
        if std::mem::take(&mut self.handshaking) {
            let mut counts = lock(&self.gate.counts);
            counts.handshakes = counts.handshakes.saturating_sub(1);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut counts = lock(&self.gate.counts);
        counts.total = counts.total.saturating_sub(1);
        if self.handshaking {
            counts.handshakes = counts.handshakes.saturating_sub(1);
        }
        if let Some(n) = counts.per_address.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.per_address.remove(&self.ip);
            }
        }
    }
}

/// An allowance per address: a bucket of `burst` that refills at `rate` a second; an
/// address whose bucket is empty is refused. Addresses with a full bucket are forgotten
/// when many are remembered.
struct PerAddress {
    rate: f64,
    burst: f64,
    by_address: HashMap<IpAddr, Bucket>,
}

impl PerAddress {
    fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst,
            by_address: HashMap::new(),
        }
    }

    fn locked(&mut self, ip: IpAddr, now: Instant) -> bool {
        self.by_address
            .get_mut(&ip)
            .is_some_and(|b| b.level(now) < 1.0)
    }

    /// Takes one of `ip`'s allowance; `false` if none is left.
    fn take(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.locked(ip, now) {
            return false;
        }
        self.charge(ip, now);
        true
    }

    /// Takes one of `ip`'s allowance, into debt if none is left.
    fn charge(&mut self, ip: IpAddr, now: Instant) {
        if self.by_address.len() >= REMEMBERED && !self.by_address.contains_key(&ip) {
            // Forget the addresses whose allowance is full again; if none, the oldest.
            self.by_address.retain(|_, b| b.level(now) < b.burst);
            if self.by_address.len() >= REMEMBERED
                && let Some(oldest) = self
                    .by_address
                    .iter()
                    .min_by_key(|(_, b)| b.at)
                    .map(|(ip, _)| *ip)
            {
                self.by_address.remove(&oldest);
            }
        }
        let (rate, burst) = (self.rate, self.burst);
        self.by_address
            .entry(ip)
            .or_insert_with(|| Bucket::full(rate, burst, now))
            .take(now);
    }
}

/// A token bucket: `burst` tokens at most, refilled at `rate` a second; taking may go into
/// debt, which is then waited for.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(rate: f64, burst: f64, now: Instant) -> Self {
        Self {
            rate,
            burst,
            tokens: burst,
            at: now,
        }
    }

    fn level(&mut self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
        self.tokens
    }

    /// Takes one token; how long the taker must wait for it (zero if it was there).
    fn take(&mut self, now: Instant) -> Duration {
        self.level(now);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// Requests per second per token.
pub(crate) struct Rates {
    per_second: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Rates {
    pub(crate) fn new(limits: &Limits) -> Self {
        Self {
            per_second: f64::from(limits.requests_per_second),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// How long a request of `token` must wait before it is answered.
    pub(crate) fn delay(&self, token: &str) -> Duration {
        let now = Instant::now();
        let mut buckets = lock(&self.buckets);
        if let Some(bucket) = buckets.get_mut(token) {
            return bucket.take(now);
        }
        let mut bucket = Bucket::full(self.per_second, self.per_second, now);
        let wait = bucket.take(now);
        buckets.insert(token.to_owned(), bucket);
        wait
    }
}

/// Logs a refusal of one kind at most once a second, with how many there were since.
#[derive(Default)]
pub(crate) struct Quiet {
    seen: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

impl Quiet {
    /// Counts one event of `kind`; `Some(n)` when it is time to log the `n` counted since
    /// the last report.
    pub(crate) fn note(&self, kind: &'static str) -> Option<u64> {
        let now = Instant::now();
        let mut seen = lock(&self.seen);
        let entry = seen
            .entry(kind)
            .or_insert((now - Duration::from_secs(2), 0));
        entry.1 += 1;
        if now.saturating_duration_since(entry.0) >= Duration::from_secs(1) {
            let n = entry.1;
            *entry = (now, 0);
            Some(n)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn the_gate_counts_and_frees() {
        let gate = Gate::new(Limits {
            max_connections: 3,
            max_connections_per_address: 2,
            max_handshakes: 2,
            handshakes_per_second_per_address: 100,
            ..Limits::default()
        });
        let mut a = gate.admit(ip(1)).unwrap();
        let b = gate.admit(ip(1)).unwrap();
        assert_eq!(gate.admit(ip(2)).err(), Some(Full::Handshakes));
        a.established();
        assert_eq!(gate.admit(ip(1)).err(), Some(Full::Address));
        let c = gate.admit(ip(2)).unwrap();
        assert_eq!(gate.counts(), (3, 2));
        drop(b);
        assert_eq!(gate.counts(), (2, 1));
        let mut d = gate.admit(ip(3)).unwrap();
        d.established();
        assert_eq!(gate.admit(ip(4)).err(), Some(Full::Total));
        drop((a, c, d));
        assert_eq!(gate.counts(), (0, 0));
        assert!(lock(&gate.counts).per_address.is_empty());
    }

    #[test]
    fn an_address_opening_connections_too_fast_is_refused() {
        let gate = Gate::new(Limits {
            handshakes_per_second_per_address: 3,
            ..Limits::default()
        });
        let tickets: Vec<_> = (0..3).map(|_| gate.admit(ip(1)).unwrap()).collect();
        assert_eq!(gate.admit(ip(1)).err(), Some(Full::Rate));
        assert!(
            gate.admit(ip(2)).is_ok(),
            "other addresses are not affected"
        );
        drop(tickets);
        assert_eq!(
            gate.admit(ip(1)).err(),
            Some(Full::Rate),
            "a rate, not a count"
        );
        std::thread::sleep(Duration::from_millis(400));
        assert!(gate.admit(ip(1)).is_ok());
    }

    #[test]
    fn trusted_addresses_skip_the_per_address_limits_only() {
        let gate = Gate::new(Limits {
            max_connections: 5,
            max_connections_per_address: 1,
            handshakes_per_second_per_address: 1,
            auth_failures_per_minute: 1,
            ..Limits::default()
        });
        let local = IpAddr::from([127, 0, 0, 1]);
        let tickets: Vec<_> = (0..5).map(|_| gate.admit(local).unwrap()).collect();
        (0..5).for_each(|_| gate.refused_token(local));
        assert!(!gate.guessing(local));
        assert_eq!(
            gate.admit(local).err(),
            Some(Full::Total),
            "the total still counts"
        );
        drop(tickets);
        let _one = gate.admit(ip(1)).unwrap();
        assert_eq!(gate.admit(ip(1)).err(), Some(Full::Address));
    }

    #[test]
    fn guessing_locks_an_address_out_until_it_refills() {
        let mut guesses = PerAddress::new(10.0 / 60.0, 10.0);
        let t0 = Instant::now();
        for _ in 0..10 {
            assert!(!guesses.locked(ip(1), t0));
            assert!(guesses.take(ip(1), t0));
        }
        assert!(guesses.locked(ip(1), t0));
        assert!(
            !guesses.locked(ip(2), t0),
            "other addresses are not affected"
        );
        // One guess more every 6 s.
        assert!(guesses.locked(ip(1), t0 + Duration::from_secs(5)));
        assert!(!guesses.locked(ip(1), t0 + Duration::from_secs(7)));
        // Refusals past the allowance lock the address out for longer.
        let t1 = t0 + Duration::from_secs(7);
        for _ in 0..3 {
            guesses.charge(ip(1), t1);
        }
        assert!(guesses.locked(ip(1), t1 + Duration::from_secs(12)));
        assert!(!guesses.locked(ip(1), t1 + Duration::from_secs(20)));
    }

    #[test]
    fn a_dual_stack_servers_local_client_is_trusted() {
        let gate = Gate::new(Limits {
            max_connections_per_address: 1,
            ..Limits::default()
        });
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let _a = gate.admit(mapped).unwrap();
        let _b = gate.admit(mapped).unwrap();
        for _ in 0..20 {
            gate.refused_token(mapped);
        }
        assert!(!gate.guessing(mapped));
    }

    #[test]
    fn requests_beyond_the_rate_wait() {
        let rates = Rates::new(&Limits {
            requests_per_second: 100,
            ..Limits::default()
        });
        for _ in 0..100 {
            assert_eq!(rates.delay("a"), Duration::ZERO);
        }
        let wait = rates.delay("a");
        assert!(wait > Duration::from_millis(5) && wait <= Duration::from_millis(11));
        assert_eq!(
            rates.delay("b"),
            Duration::ZERO,
            "tokens have their own rate"
        );
    }

    #[test]
    fn zero_limits_are_refused() {
        let limits = Limits {
            max_handshakes: 0,
            ..Limits::default()
        };
        assert!(limits.validate().is_err());
        assert!(Limits::default().validate().is_ok());
    }

    #[test]
    fn quiet_logs_once_a_second() {
        let quiet = Quiet::default();
        assert_eq!(quiet.note("x"), Some(1));
        assert_eq!(quiet.note("x"), None);
        assert_eq!(quiet.note("y"), Some(1));
    }
}
