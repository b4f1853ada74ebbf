#[rekord::record]
pub struct Part {
    #[record(defualt)]
    pub name: String,
}

fn main() {}
