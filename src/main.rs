//! The `zdmap` command line: parses arguments and calls the library.

fn main() -> std::process::ExitCode {
    zdmap::commands::main()
}
