//! Fault injection for the crash tests. With `ARCA_FAULT_AFTER_WRITES=N`, the process stops
//! right after the N-th write or removal (in the repository or the catalog) of an operation
//! that counts them (rotation, rekey, forget, prune), as a crash or power loss would leave
//! things: it exits with status 75, or with `ARCA_FAULT_SIGNAL=KILL` it sends itself SIGKILL
//! (nothing runs after that: no destructor, no flush). With `ARCA_FAULT_PAUSE_AFTER_WRITES=N`
//! it sleeps `ARCA_FAULT_PAUSE_SECS` (default 3) there instead, holding whatever locks it
//! holds (for the tests of work that must wait).

use std::sync::atomic::{AtomicU64, Ordering};

static WRITES: AtomicU64 = AtomicU64::new(0);
pub const EXIT: i32 = 75;

/// Counts one completed write; stops the process here if told to.
pub fn wrote(what: &str) {
    let n = WRITES.fetch_add(1, Ordering::SeqCst) + 1;
    let limit = std::env::var("ARCA_FAULT_AFTER_WRITES")
        .ok()
        .and_then(|v| v.parse::<u64>().ok());
    let pause = std::env::var("ARCA_FAULT_PAUSE_AFTER_WRITES")
        .ok()
        .and_then(|v| v.parse::<u64>().ok());
    if pause == Some(n) {
        let secs = std::env::var("ARCA_FAULT_PAUSE_SECS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(3);
        eprintln!("arca: pausing {secs}s after write {n} ({what})");
        std::thread::sleep(std::time::Duration::from_secs(secs));
    }
    if limit == Some(n) {
        if std::env::var("ARCA_FAULT_SIGNAL").as_deref() == Ok("KILL") {
            let _ = rustix::process::kill_process(
                rustix::process::getpid(),
                rustix::process::Signal::KILL,
            );
        }
        eprintln!("arca: fault injected after write {n} ({what})");
        std::process::exit(EXIT);
    }
}

/// With `ARCA_FAULT_PAUSE_AT=<path>`, a backup sleeps `ARCA_FAULT_PAUSE_SECS` (default 3)
/// right before it opens that source entry (relative path as the file index writes it), after
/// the walk has seen it: the tests swap it for a symlink there.
pub fn pause_at(rel: &[u8]) {
    static AT: std::sync::OnceLock<Option<Vec<u8>>> = std::sync::OnceLock::new();
    let at = AT.get_or_init(|| {
        std::env::var_os("ARCA_FAULT_PAUSE_AT").map(|v| {
            use std::os::unix::ffi::OsStrExt;
            v.as_bytes().to_vec()
        })
    });
    if at.as_deref() == Some(rel) {
        let secs = std::env::var("ARCA_FAULT_PAUSE_SECS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(3);
        eprintln!(
            "arca: pausing {secs}s before opening {}",
            String::from_utf8_lossy(rel)
        );
        std::thread::sleep(std::time::Duration::from_secs(secs));
    }
}

/// With `ARCA_FAULT_SLOW_PASSPHRASE_CHECK=SECS`, the check of a given passphrase that runs
/// while the work starts (see [`crate::resolve::PassphraseCheck`]) sleeps that long first:
/// the tests of what must wait for it.
pub fn slow_passphrase_check() {
    if let Some(secs) = std::env::var("ARCA_FAULT_SLOW_PASSPHRASE_CHECK")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        std::thread::sleep(std::time::Duration::from_secs(secs));
    }
}
