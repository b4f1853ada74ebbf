//! The setup the reclaim red teams share (redteam_reclaim.rs, redteam_wait_scenarios.rs): B
//! creates `x` (qty 1) and holds it: the backup. After the backup B sets qty 2 and returns
//! it; A borrows it and sets qty 50 (A holds it). The server is restored: it says B holds
//! `x` (qty 1). A comes back first and waits, then goes away. Needs the test crate's
//! `process` (common/process.rs) and `shared` (common/restore.rs) modules.
#![allow(dead_code, unused_imports)]

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rekord::{Db, Key, SyncConfig};

use crate::process::{self, BIN, ServerProcess, backup, restore, token};
use crate::shared::{Note, Part, Row, converge_with, open_with, parts, trace};

pub const LIMIT: Duration = Duration::from_secs(20);

pub fn config(addr: std::net::SocketAddr, token: &str) -> SyncConfig {
    process::config(addr, token)
        .range_size(3)
        .timeout(Duration::from_secs(10))
}

pub fn eventually(mut ok: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while !ok() {
        if start.elapsed() > LIMIT {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// Lets each replica catch up and push, twice over; entries that wait with a record to be
/// taken back (`SyncStatus::waiting`) are not waited for: nothing sends them until the
/// stale holder gives the borrow back.
pub fn settle(dbs: &[&Db]) {
    for _ in 0..2 {
        for d in dbs {
            let _ = d.wait_caught_up(LIMIT);
            let start = Instant::now();
            while start.elapsed() < LIMIT {
                let st = d.sync_status().unwrap();
                if st.outbox == 0 || (st.caught_up && st.outbox == st.waiting) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

pub struct Env {
    pub _tmp: tempfile::TempDir,
    pub data: PathBuf,
    pub token: String,
    pub server: Option<ServerProcess>,
    pub addr: std::net::SocketAddr,
    pub pa: PathBuf,
    pub pb: PathBuf,
    pub pc: PathBuf,
    pub pd: PathBuf,
    pub bk: PathBuf,
    pub x: Key<Part>,
    pub a_replica: u32,
}

impl Env {
    pub fn open(&self, p: &Path) -> Db {
        open_with(p, config(self.addr, &self.token))
    }

    pub fn fresh(&self) -> Db {
        let f = Db::memory_synced(config(self.addr, &self.token)).unwrap();
        f.wait_caught_up(LIMIT).unwrap();
        f
    }

    /// x as the server has it (through a fresh replica).
    pub fn server_x(&self) -> Option<Row> {
        let f = self.fresh();
        parts(&f).into_iter().find(|r| r.0 == self.x.id())
    }

    pub fn restore(&mut self, from: &Path) {
        let s = self.server.take().unwrap();
        self.server = Some(restore(s, &self.data, from));
    }

    pub fn backup(&self, out: &Path) {
        backup(&self.data, out);
    }

    /// B (the stale holder) reconciles: it returns x.
    pub fn b_returns(&self) {
        let b = self.open(&self.pb);
        settle(&[&b]);
        assert!(
            eventually(|| self.server_x().is_some_and(|r| r.6 == 0)),
            "B returned x: {:?}",
            self.server_x()
        );
        drop(b);
    }

    /// B reconciles (whatever becomes of x).
    pub fn b_returns_any(&self) {
        let b = self.open(&self.pb);
        settle(&[&b]);
        std::thread::sleep(Duration::from_millis(300));
        drop(b);
    }

    /// C borrows x, sets qty, returns it if `ret`.
    pub fn c_edits(&self, qty: u32, ret: bool) -> u32 {
        let c = self.open(&self.pc);
        settle(&[&c]);
        let t = c.tree::<Part>().unwrap();
        t.borrow(self.x).unwrap();
        t.update(self.x, |p| p.qty = qty).unwrap();
        if ret {
            t.return_borrow(self.x).unwrap();
        }
        settle(&[&c]);
        let r = c.replica();
        drop(c);
        r
    }

    /// `n` notes written by D (another replica) in batches.
    pub fn fillers(&self, n: u32) {
        let d = open_with(&self.pd, config(self.addr, &self.token).range_size(20_000));
        let mut left = n;
        while left > 0 {
            let k = left.min(1000);
            d.write(|b| {
                let mut t = b.tree::<Note>()?;
                for i in 0..k {
                    t.create(&Note { a: i, b: 7 })?;
                }
                Ok(())
            })
            .unwrap();
            left -= k;
        }
        settle(&[&d]);
        drop(d);
    }

    /// Every replica (reopened) equals a fresh one; returns x as the fresh one has it.
    pub fn converge_all(&self) -> Option<Row> {
        let a = self.open(&self.pa);
        let b = self.open(&self.pb);
        let c = self.open(&self.pc);
        settle(&[&a, &b, &c]);
        let fresh = converge_with(
            config(self.addr, &self.token),
            &[("A", &a), ("B", &b), ("C", &c)],
        );
        parts(&fresh).into_iter().find(|r| r.0 == self.x.id())
    }
}

/// The setup described in the module docs: ends with A waiting to take x back and closed.
pub fn setup() -> Env {
    let env = setup_restored();
    {
        // A comes back first: B (stale) holds x on the server: A waits.
        let a = env.open(&env.pa);
        settle(&[&a]);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(parts(&a)[0].3, 50, "A keeps its edit while waiting");
        let sx = env.server_x().unwrap();
        assert_eq!(
            (sx.3, sx.6 != 0),
            (1, true),
            "the server: qty 1, held (by B)"
        );
    }
    env
}

/// The setup up to the restore: nobody has come back yet (the server says B holds x, qty
/// 1; A's copy is qty 50, held by A).
pub fn setup_restored() -> Env {
    setup_restored_with(false)
}

/// [`setup_restored`]; with `b_away`, B closes right after returning x, before A borrows
/// it: B never learns of A's borrow, and after the restore it resends its qty 2 (as the
/// last to change x, it thinks) with the return.
pub fn setup_restored_with(b_away: bool) -> Env {
    trace();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let token = token(&data);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    let addr = server.addr;
    let p = |n: &str| tmp.path().join(format!("{n}.rekord"));
    let (pa, pb, pc, pd) = (p("a"), p("b"), p("c"), p("d"));
    let bk = tmp.path().join("bk.redb");
    let mut env = Env {
        data,
        token,
        server: Some(server),
        addr,
        pa,
        pb,
        pc,
        pd,
        bk,
        x: Key::new(0, 0),
        a_replica: 0,
        _tmp: tmp,
    };
    {
        let a = env.open(&env.pa);
        let mut b = Some(env.open(&env.pb));
        let c = env.open(&env.pc);
        {
            let bd = b.as_ref().unwrap();
            let tb = bd.tree::<Part>().unwrap();
            env.x = tb
                .create(&Part {
                    name: "x".into(),
                    qty: 1,
                })
                .unwrap();
            settle(&[&a, bd, &c]);
            assert!(eventually(|| parts(&a).len() == 1 && parts(&c).len() == 1));
            env.backup(&env.bk);
            tb.update(env.x, |p| p.qty = 2).unwrap();
            tb.return_borrow(env.x).unwrap();
            settle(&[bd]);
        }
        if b_away {
            drop(b.take());
        }
        let ta = a.tree::<Part>().unwrap();
        assert!(eventually(|| parts(&a)[0].6 == 0));
        ta.borrow(env.x).unwrap();
        ta.update(env.x, |p| p.qty = 50).unwrap();
        env.a_replica = a.replica();
        let mut all = vec![&a, &c];
        all.extend(b.as_ref());
        settle(&all);
        assert!(eventually(|| all.iter().all(|d| parts(d)[0].3 == 50)));
    }
    let bk = env.bk.clone();
    env.restore(&bk);
    env
}

pub fn qty_holder(r: Option<Row>) -> Option<(u32, u32)> {
    r.map(|r| (r.3, r.6))
}
