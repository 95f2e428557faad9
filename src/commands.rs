//! The CLI commands, as library functions (being written).

pub fn main() -> std::process::ExitCode {
    std::process::ExitCode::SUCCESS
}
