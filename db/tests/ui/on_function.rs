#[rekord::record]
fn part() {}

fn main() {}
