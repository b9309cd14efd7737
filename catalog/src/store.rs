//! The catalog store. Filled in later.
