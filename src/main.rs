//! The `hearsay` binary: everything lives in the library; see `cli`.

fn main() -> std::process::ExitCode {
    hearsay::memory::tune();
    hearsay::cli::main()
}
