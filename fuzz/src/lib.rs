//! What every fuzz target shares: turning a stack overflow into a crash libFuzzer can report.
//!
//! Without a sanitizer runtime (stable Rust has none), a stack overflow is a SIGSEGV whose
//! handler has no stack left to run on, so the process dies without saving the input. An
//! alternate signal stack and a SIGSEGV handler that aborts on it let libFuzzer's SIGABRT
//! handler run there and write the input to `artifacts/` like any other crash.

use std::sync::Once;

/// Size of the alternate signal stack: room for libFuzzer's crash report.
const SIGNAL_STACK: usize = 1 << 20;

extern "C" fn abort_on_segv(_: libc::c_int) {
    // SAFETY: abort is async-signal-safe.
    unsafe { libc::abort() }
}

/// Installs the alternate stack and the handler, once per process (the fuzzing thread is the
/// main thread).
pub fn catch_stack_overflows() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let stack: &'static mut [u8] = Box::leak(vec![0u8; SIGNAL_STACK].into_boxed_slice());
        // SAFETY: the stack lives for the rest of the process; the structs are fully set.
        unsafe {
            let alt = libc::stack_t {
                ss_sp: stack.as_mut_ptr().cast(),
                ss_flags: 0,
                ss_size: SIGNAL_STACK,
            };
            libc::sigaltstack(&alt, std::ptr::null_mut());
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = abort_on_segv as extern "C" fn(libc::c_int) as usize;
            action.sa_flags = libc::SA_ONSTACK;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(libc::SIGSEGV, &action, std::ptr::null_mut());
        }
    });
}
