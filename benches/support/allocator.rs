//! The allocator the `zdmap` binary uses (see `src/main.rs`), so the benches measure what
//! ships. `cargo bench --no-default-features` measures with the system's allocator instead.

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
