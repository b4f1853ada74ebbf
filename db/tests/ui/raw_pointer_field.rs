#[rekord::record]
pub struct Part {
    pub ptr: *const u8,
}

fn main() {}
