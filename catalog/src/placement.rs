//! Bucket placement. Filled in by the placement work.
