//! The `hearsay` binary: everything lives in the library; see `cli`.

/// mimalloc instead of glibc's malloc: sled copies a whole leaf for each write into it
/// (`docs/storage.md`), and in the import profile glibc's allocator (`_int_malloc`,
/// consolidation of freed chunks) took about a third of the writer thread's time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    hearsay::cli::main()
}
