//! Shared helpers of rekord's benchmarks: timing, medians, a tiny seeded RNG, and the report
//! that prints every figure beside the raw baseline measured in the same run.

use std::time::Instant;

/// Runs `f` once and returns the elapsed seconds.
pub fn time(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

/// The median of `xs` (0 for an empty slice).
pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// xorshift64*: deterministic, seeded, good enough for picking keys.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a nonzero seed.
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

struct Row {
    case: String,
    ops: u64,
    raw: Vec<f64>,
    ours: Vec<f64>,
    peer: Option<Vec<f64>>,
}

/// Collects rows and prints them as a markdown table.
#[derive(Default)]
pub struct Report {
    rows: Vec<Row>,
    notes: Vec<String>,
    baseline: Option<String>,
}

fn fmt_time(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 1e-3 {
        format!("{:.1} ms", s * 1e3)
    } else {
        format!("{:.1} µs", s * 1e6)
    }
}

fn fmt_rate(ops: u64, s: f64) -> String {
    let r = ops as f64 / s;
    if r >= 1e6 {
        format!("{:.2} M/s", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1} k/s", r / 1e3)
    } else {
        format!("{r:.0} /s")
    }
}

impl Report {
    /// An empty report against the raw redb + rkyv baseline.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty report whose baseline column is named `baseline`.
    pub fn against(baseline: &str) -> Self {
        Report {
            baseline: Some(baseline.to_owned()),
            ..Self::default()
        }
    }

    /// Adds a case: seconds per round for the raw baseline, rekord and (optionally) the peer.
    pub fn add(&mut self, case: &str, ops: u64, raw: &[f64], ours: &[f64], peer: Option<&[f64]>) {
        let row = Row {
            case: case.to_owned(),
            ops,
            raw: raw.to_vec(),
            ours: ours.to_vec(),
            peer: peer.map(<[f64]>::to_vec),
        };
        eprintln!("{}", Self::line(&row));
        self.rows.push(row);
    }

    /// Adds a free-text line printed under the table.
    pub fn note(&mut self, s: String) {
        eprintln!("{s}");
        self.notes.push(s);
    }

    fn line(r: &Row) -> String {
        let (raw, ours) = (median(&r.raw), median(&r.ours));
        let peer = r.peer.as_ref().map(|p| median(p));
        format!(
            "| {} | {} ({}) | {} ({}) | **{:.2}x** | {} |",
            r.case,
            fmt_time(raw),
            fmt_rate(r.ops, raw),
            fmt_time(ours),
            fmt_rate(r.ops, ours),
            ours / raw,
            peer.map_or_else(
                || "-".to_string(),
                |p| format!("{} ({}) {:.2}x", fmt_time(p), fmt_rate(r.ops, p), p / raw)
            ),
        )
    }

    /// Prints the table (medians; ratios are rekord / raw and native_db / raw: lower is
    /// better, 1.00x is the raw engine) to stdout and to `target/bench-<name>.md`.
    pub fn print(&self, name: &str) {
        let mut out = String::new();
        out.push_str(&format!(
            "\n## {name} (medians of {} rounds)\n\n| case | {} | rekord | rekord/baseline | native_db (/baseline) |\n|---|---|---|---|---|\n",
            self.rows.first().map_or(0, |r| r.raw.len()),
            self.baseline.as_deref().unwrap_or("raw redb+rkyv")
        ));
        for r in &self.rows {
            out.push_str(&Self::line(r));
            out.push('\n');
        }
        for n in &self.notes {
            out.push_str(&format!("\n{n}\n"));
        }
        println!("{out}");
        let dir = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "../target".into());
        let _ = std::fs::write(format!("{dir}/bench-{name}.md"), out);
    }
}
