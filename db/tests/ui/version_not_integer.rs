#[rekord::record(version = "2")]
pub struct Part {
    pub name: String,
}

fn main() {}
