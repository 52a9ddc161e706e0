//! The `hearsay` binary: everything lives in the library; see `cli`.

fn main() -> std::process::ExitCode {
    // SAFETY: the first statement of `main`: no other thread exists yet (`tune`'s
    // contract; the runtime and the writer start later, in `cli::main`).
    #[allow(unsafe_code)]
    unsafe {
        hearsay::memory::tune()
    };
    hearsay::cli::main()
}
