//! arca: an encrypted, deduplicating backup engine built around key management.
//!
//! Layers, bottom up: [`crypto`] (the only module touching AES-GCM, Argon2 and BLAKE3),
//! [`keys`] (key providers behind one trait), [`repo`] (format objects and the local
//! backend), [`engine`] (backup, restore and check pipelines), [`catalog`] (the SQLite
//! product database), [`resolve`] (the restore resolver), and [`cli`].
#![forbid(unsafe_code)]

pub mod catalog;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod engine;
pub mod error;
pub mod fault;
pub mod keys;
pub mod ops;
pub mod passwords;
pub mod repo;
pub mod resolve;
pub mod signals;
pub mod ui;

pub use error::{Error, Result};
