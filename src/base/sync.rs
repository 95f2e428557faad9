//! Locks that outlive a panic: a mutex whose holder panicked still gives its data, which every
//! value zdmap guards this way (counters, caches, instants) keeps consistent between statements.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, recovering the data if a panicking holder poisoned it.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
