#[rekord::record]
pub struct Part<T> {
    pub value: T,
}

fn main() {}
