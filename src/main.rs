//! The `hearsay` binary: everything lives in the library; see `cli`.

fn main() -> std::process::ExitCode {
    tune_allocator();
    hearsay::cli::main()
}

/// Fixes glibc's mmap threshold at its initial 128 KiB. By default glibc raises it to
/// the size of each large block freed (up to 32 MiB), after which large blocks come from
/// the heap, where freed ones are rarely returned to the system: a 10,000-member import
/// (`bench community`) held 1,363–1,426 MiB at its peak, 1,014 MiB with the threshold
/// fixed (`MALLOC_MMAP_THRESHOLD_=131072`, same import time: 199.5 s against 192–205);
/// a node serving reads peaked at 481 MiB against 486–500 (docs/ARCHITECTURE.md). An
/// operator's setting still wins: glibc reads `MALLOC_MMAP_THRESHOLD_` and
/// `GLIBC_TUNABLES` before `main`, and this leaves the threshold alone when either sets it.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none()
        && !std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("mmap_threshold"))
    {
        // SAFETY: `mallopt` takes two integers and has no memory-safety preconditions;
        // glibc documents it as MT-Safe (it locks the arenas), and this runs first thing
        // in `main`, before any thread of ours exists. Its result (0 on failure) only
        // says whether the setting took: failing leaves glibc's default, which is safe.
        #[allow(unsafe_code)]
        let _ = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024) };
    }
}
