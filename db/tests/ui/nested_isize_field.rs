#[rekord::record]
pub struct Part {
    pub offsets: Vec<Option<isize>>,
}

fn main() {}
