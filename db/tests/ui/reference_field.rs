#[rekord::record]
pub struct Part {
    pub name: &'static str,
}

fn main() {}
