//! The integration suite, one test binary: each module below was its own binary once, and
//! linking 21 of them (each with the whole AWS SDK) was most of a clean CI build. The modules
//! keep their names, so `cargo test --test suite hostile::` runs what `--test hostile` did.

mod common;

mod backend;
mod bundles;
mod cli;
mod copy;
mod disk_full;
mod docs;
mod everyday;
mod excludes;
mod fidelity;
mod fuzz;
mod hostile;
mod json_schema;
mod key_hierarchy;
mod kmip;
mod kms;
mod kms_faults;
mod lifecycle;
mod retention;
mod s3;
mod s3_faults;
mod vectors;
mod vectors_v2;
