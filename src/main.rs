//! The `hearsay` binary: everything lives in the library; see `cli`.

/// With `--features mimalloc`, every allocation of the binary; see `hearsay::memory`.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's settings, before the first allocation (`memory::tune`).
///
/// # Safety
///
/// Runs before `main` (the `ctor` crate's contract: only C library calls, nothing of
/// Rust's runtime): `tune` calls mimalloc's `mi_option_set_default`, nothing else.
#[cfg(feature = "mimalloc")]
#[ctor::ctor]
#[allow(unsafe_code)]
unsafe fn tune_the_allocator() {
    // SAFETY: before `main` the process has one thread (`tune`'s contract).
    unsafe { hearsay::memory::tune() };
}

fn main() -> std::process::ExitCode {
    // SAFETY: the first statement of `main`: no other thread exists yet (`tune`'s
    // contract; the runtime and the writer start later, in `cli::main`).
    #[cfg(not(feature = "mimalloc"))]
    #[allow(unsafe_code)]
    unsafe {
        hearsay::memory::tune()
    };
    hearsay::cli::main()
}

#[cfg(all(test, feature = "mimalloc"))]
mod tests {
    use hearsay::memory::{ARENA_EAGER_COMMIT, PURGE_DELAY};

    /// The binary's memory comes from mimalloc, set up before `main` as `memory::tune`
    /// says (unless the environment running the test decides otherwise).
    #[test]
    #[allow(unsafe_code)]
    fn the_binary_allocates_with_mimalloc_tuned_before_main() {
        let block = vec![7u8; 4096];
        // SAFETY: both take a pointer or an option number and only read mimalloc's own
        // bookkeeping; the pointer is live for the call.
        let (ours, purge, eager) = unsafe {
            (
                libmimalloc_sys::mi_is_in_heap_region(block.as_ptr().cast()),
                libmimalloc_sys::mi_option_get(PURGE_DELAY),
                libmimalloc_sys::mi_option_get(ARENA_EAGER_COMMIT),
            )
        };
        assert!(ours, "a block the binary allocated is not mimalloc's");
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(purge, 0, "freed pages are not purged at once");
        }
        if std::env::var_os("MIMALLOC_ARENA_EAGER_COMMIT").is_none() {
            assert_eq!(eager, 0, "arenas are committed eagerly");
        }
    }
}
