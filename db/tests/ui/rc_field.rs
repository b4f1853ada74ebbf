#[rekord::record]
pub struct Part {
    pub name: String,
    pub shared: std::rc::Rc<u32>,
}

fn main() {}
