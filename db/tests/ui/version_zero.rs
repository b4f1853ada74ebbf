#[rekord::record(version = 0)]
pub struct Part {
    pub name: String,
}

fn main() {}
