//! Compile-fail tests of `#[rekord::record]` / `#[rekord::data]` and of typed keys.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
