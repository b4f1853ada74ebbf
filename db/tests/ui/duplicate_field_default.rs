#[rekord::record]
pub struct Part {
    #[record(default, default = 3)]
    pub qty: u32,
}

fn main() {}
