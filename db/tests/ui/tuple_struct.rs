#[rekord::record]
pub struct Part(String, u32);

fn main() {}
