//! Bench tool.
fn main() {}
