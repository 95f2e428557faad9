//! The `zdmap` command line: parses arguments and calls the library.

/// mimalloc instead of the system allocator: the mapping engine builds and drops many small
/// JSON values per event, and allocation is a fifth of its time with glibc's malloc
/// (BENCHMARKS.md has the figures with both).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    zdmap::commands::main()
}
