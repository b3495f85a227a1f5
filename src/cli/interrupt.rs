//! Ctrl-C during training: the first SIGINT only sets a flag, which the training loop reads before each
//! step, so the step in progress finishes, a checkpoint is written and `peerlm` exits with status 130.
//! The handler is installed with `SA_RESETHAND`, so a second Ctrl-C kills the process at once (a
//! checkpoint being written then leaves only a temporary, which the next run sweeps away).

use std::error::Error;
use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_signal: libc::c_int) {
    // Storing to an atomic is async-signal-safe: no lock, no allocation.
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Routes SIGINT to the flag it returns.
pub fn install() -> Result<&'static AtomicBool, Box<dyn Error>> {
    // SAFETY: `action` is fully initialised (zeroed, then the handler, flags and an empty mask) before
    // sigaction reads it; the handler only stores to a static atomic.
    let status = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // SA_RESTART: reads and writes under way when the signal lands resume instead of failing.
        action.sa_flags = libc::SA_RESETHAND | libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGINT, &action, std::ptr::null_mut())
    };
    if status != 0 {
        return Err(format!("cannot catch SIGINT: {}", std::io::Error::last_os_error()).into());
    }
    Ok(&INTERRUPTED)
}
