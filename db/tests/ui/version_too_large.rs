#[rekord::record(version = 4294967296)]
pub struct Part {
    pub name: String,
}

fn main() {}
