pub trait Shape {}

#[rekord::record]
pub struct Part {
    pub shape: Box<dyn Shape>,
}

fn main() {}
