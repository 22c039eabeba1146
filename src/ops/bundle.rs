//! The system configuration bundle.
