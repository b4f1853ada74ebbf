#[rekord::record(tre = "parts")]
pub struct Part {
    pub name: String,
}

fn main() {}
