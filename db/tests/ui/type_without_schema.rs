// `Duration` is archivable (rkyv) and serializable (serde) but has no rekord schema, so the only
// error is the missing `Describe` impl, pointing at the field type.
#[rekord::record]
pub struct Part {
    pub name: String,
    pub lead_time: std::time::Duration,
}

fn main() {}
