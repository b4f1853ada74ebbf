#[rekord::record]
pub struct Part {
    pub qty: usize,
}

fn main() {}
