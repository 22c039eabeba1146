//! SIGINT and SIGTERM for long operations (backup, restore, check, rotation): the first
//! signal asks the operation to stop at the next safe point (it then says what it kept and
//! exits 130 or 143); a second one terminates at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use signal_hook::consts::{SIGINT, SIGTERM};

static STATE: std::sync::OnceLock<Arc<AtomicUsize>> = std::sync::OnceLock::new();

fn state() -> &'static Arc<AtomicUsize> {
    STATE.get_or_init(|| Arc::new(AtomicUsize::new(0)))
}

/// Installs the handlers (idempotent). Until then, signals keep their default action.
pub fn install() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let s = state();
        let seen = Arc::new(std::sync::atomic::AtomicBool::new(false));
        for sig in [SIGINT, SIGTERM] {
            // Actions run in the order registered: on a second signal `seen` is already
            // set, so the default action (termination) runs; on the first it is not yet.
            let _ = signal_hook::flag::register_conditional_default(sig, seen.clone());
            let _ = signal_hook::flag::register(sig, seen.clone());
            let _ = signal_hook::flag::register_usize(sig, s.clone(), sig as usize);
        }
    });
}

/// The signal that asked to stop (SIGINT or SIGTERM), if any.
pub fn requested() -> Option<i32> {
    match state().load(Ordering::Relaxed) {
        0 => None,
        s => Some(s as i32),
    }
}

/// The exit status for a stop asked by `signal`: 128 + its number (130, 143).
pub fn exit_code(signal: i32) -> i32 {
    128 + signal
}

/// Test hook: behave as if `signal` had arrived.
#[doc(hidden)]
pub fn raise_for_tests(signal: i32) {
    state().store(signal as usize, Ordering::Relaxed);
}
