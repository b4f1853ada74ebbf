#[rekord::record(version = 1, version = 2)]
pub struct Part {
    pub name: String,
}

fn main() {}
