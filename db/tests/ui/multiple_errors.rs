#[rekord::record(version = 0, tree = "Bad")]
pub struct Part {
    pub a: usize,
    pub b: &'static str,
    #[record(nope)]
    pub c: u32,
}

fn main() {}
