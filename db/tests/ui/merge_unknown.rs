#[rekord::record(tree = "docs", version = 1, merge = "newest-wins")]
pub struct Doc {
    pub title: String,
}

#[rekord::record(tree = "scores", version = 1, merge = "larger-wins:points")]
pub struct Score {
    pub name: String,
    pub score: u32,
}

#[rekord::record(tree = "notes", version = 1, merge = 3)]
pub struct Note {
    pub text: String,
}

fn main() {}
