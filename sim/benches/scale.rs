//! Scale benchmark placeholder; the real one follows.
fn main() {}
