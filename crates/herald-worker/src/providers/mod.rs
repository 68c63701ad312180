//! Message providers. One folder per provider family, the same files in each.

pub mod aws;
