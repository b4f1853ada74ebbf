#[rekord::record]
pub enum Nothing {}

fn main() {}
