#[rekord::record]
pub struct Part;

fn main() {}
