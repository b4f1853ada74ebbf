#[rekord::record(crate = 42)]
pub struct Part {
    pub name: String,
}

fn main() {}
