//! The process's memory and glibc's allocator: the settings the binary starts with
//! (`tune`) and giving freed memory back to the system after large transient work
//! (`give_back`). Both are no-ops where the C library is not glibc.
//!
//! glibc's defaults suit short programs, not a node that imports millions of listens
//! and then serves reads for months: measured on the 10,000-member benchmark
//! (`bench community`, docs/ARCHITECTURE.md), freed memory stayed resident in three ways
//! these settings address.

/// Sets glibc's allocator up for a long-running node, unless the operator's environment
/// (`MALLOC_MMAP_THRESHOLD_`, `MALLOC_ARENA_MAX`, or the same in `GLIBC_TUNABLES`) already
/// decides; glibc reads those itself before `main`.
///
/// - The mmap threshold stays at its initial 128 KiB. By default glibc raises it to the
///   size of each large block freed (up to 32 MiB), after which large blocks come from
///   the heap, where freed ones are rarely returned: an import of 10,000 members held
///   1,363–1,426 MiB at its peak, 1,014 MiB with the threshold fixed (same import time).
/// - At most one arena per core (at least two), against glibc's eight per core. A thread
///   that finds its arena busy gets another, so which arenas hold what depends on timing,
///   and each keeps its own freed memory: the first node serving reads on a store no
///   process had read yet (cold disk, slower reads, more overlap) peaked at 565–593 MiB,
///   later ones at 480; with two arenas 465, and the import's peak fell from 1,077 to
///   877 MiB at the same speed.
///
/// # Safety
///
/// Call it first thing in `main`, before any other thread exists: glibc documents
/// `mallopt` as MT-Unsafe (it writes the allocator's global parameters, which other
/// threads' allocations read without a lock).
#[allow(unsafe_code)]
pub unsafe fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() && !tunables.contains("mmap_threshold") {
            set(libc::M_MMAP_THRESHOLD, 128 * 1024);
        }
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() && !tunables.contains("arena_max") {
            let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
            set(libc::M_ARENA_MAX, i32::try_from(cores.max(2)).unwrap_or(i32::MAX));
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set(param: i32, value: i32) {
    // SAFETY: only called from `tune`, whose contract is that no other thread exists
    // yet, so nothing allocates while glibc's parameters change (`mallopt` is
    // MT-Unsafe). It takes two integers and has no other precondition; its result (0 on
    // failure) only says whether the setting took: failing leaves glibc's default.
    #[allow(unsafe_code)]
    let _ = unsafe { libc::mallopt(param, value) };
}

/// Returns the free memory of every arena to the system (`malloc_trim(0)`): glibc only
/// gives back the top of the main heap by itself, so the hundreds of MiB of pending node
/// changes an import frees at each store of node statistics stayed resident, taken
/// again piecemeal. Costs a walk over the free blocks; call it after work that freed
/// much (a store of node statistics, the end of an import), not per request.
pub fn give_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `malloc_trim` takes an integer (bytes to leave free at the top of the
        // heap) and has no memory-safety preconditions; glibc documents it as MT-Safe
        // (it takes each arena's lock in turn) and it only releases pages no allocation
        // holds (madvise of free chunks, sbrk at the top).
        #[allow(unsafe_code)]
        let _ = unsafe { libc::malloc_trim(0) };
    }
}
