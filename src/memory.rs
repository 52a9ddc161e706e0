//! The process's allocator: the settings the binary starts with (`tune`) and giving
//! freed memory back to the system after large transient work (`give_back`). glibc's
//! allocator by default; mimalloc when built with `--features mimalloc` (`src/main.rs`).
//! Without the feature, both are no-ops where the C library is not glibc (the platform's
//! allocator, untuned).
//!
//! Which one, measured on the 10,000-member benchmark (`bench community`,
//! docs/ARCHITECTURE.md, 2026-12-05): with glibc, `malloc`, `free` and their helpers are a
//! quarter of the writer thread's samples during an import (the node's pending
//! statistics are hash maps of millions of small entries, built and dropped at every
//! store), and the import takes 149–154 s; with mimalloc, tuned here, 105.6–107.8 s. But
//! a node serving reads is 10–15% larger with mimalloc (at rest 350 MiB against 320 in
//! reuse runs, after the benchmark's reads 482–519 against 423–452, its peak 484–521
//! against 424–472), so glibc stays the default: a node lives at rest and serving
//! reads, and imports in bulk only when a community opens.
//!
//! glibc's defaults suit short programs, not a node that imports millions of listens
//! and then serves reads for months: freed memory stayed resident in three ways its
//! settings here address. mimalloc's defaults keep freed pages for a second and commit
//! its arenas eagerly (an import then peaked at 503 MiB and the node at rest held 375):
//! its settings here return freed pages at once and commit arenas as they are used.

#[cfg(not(feature = "mimalloc"))]
mod glibc {
    /// Sets glibc's allocator up for a long-running node, unless the operator's environment
    /// (`MALLOC_MMAP_THRESHOLD_`, `MALLOC_ARENA_MAX`, or the same in `GLIBC_TUNABLES`) already
    /// decides; glibc reads those itself before `main`.
    ///
    /// - The mmap threshold stays at its initial 128 KiB. By default glibc raises it to the
    ///   size of each large block freed (up to 32 MiB), after which large blocks come from
    ///   the heap, where freed ones are rarely returned: an import of 10,000 members held
    ///   1,363–1,426 MiB at its peak, 1,014 MiB with the threshold fixed (same import time).
    /// - At most one arena per core (at least two), against glibc's eight per core. Each
    ///   thread takes an arena at its first allocation (a new one while fewer than the cap
    ///   exist, else one not locked at that moment) and waits for its lock from then on, so
    ///   which threads share one, and what each holds, depends on timing; and each keeps its
    ///   own freed memory: the first node serving reads on a store no
    ///   process had read yet (cold disk, slower reads, more overlap) peaked at 565–593 MiB,
    ///   later ones at 480; with two arenas 465, and the import's peak fell from 1,077 to
    ///   877 MiB at the same speed. Sharing costs the writer waits for its arena's lock
    ///   (2026-12-06: 360,622 switches in an import of 10,000 members with two arenas,
    ///   138,680 with one per thread, which was a tenth faster but held 293 MiB at rest
    ///   against 271; sixteen arenas peaked at 512 MiB: docs/ARCHITECTURE.md).
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
}
#[cfg(not(feature = "mimalloc"))]
pub use self::glibc::{give_back, tune};

#[cfg(feature = "mimalloc")]
mod mimalloc {
    /// mimalloc's option numbers (`mi_option_e` in its `mimalloc.h`, version 3), which the
    /// `libmimalloc-sys` crate does not name for version 3.
    pub const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
    pub const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

    /// Sets mimalloc up for a long-running node, unless the operator's environment already
    /// decides (`MIMALLOC_PURGE_DELAY`, `MIMALLOC_ARENA_EAGER_COMMIT`, or any spelling and
    /// legacy name mimalloc itself reads: these are defaults, `mi_option_set_default`).
    ///
    /// - Freed pages are purged (returned to the system) at once, not after a second:
    ///   the node's pending statistics free tens of MiB at each store.
    /// - Arenas are committed as they are used, not in advance (the purges of an eagerly
    ///   committed arena left the import's peak at 503 MiB, against 457 with glibc).
    ///
    /// The binary runs it before `main` (`src/main.rs`): the first allocation reserves
    /// mimalloc's first arena, and the commit option only applies to arenas reserved after
    /// it is set (set in `main`, a 1,000-member build measured as without it).
    ///
    /// # Safety
    ///
    /// No other thread may exist: mimalloc's options are plain values that its allocations
    /// read without synchronisation, and the crate documents setting them as not thread
    /// safe. Call it from a constructor that runs before `main`, or first thing in `main`.
    #[allow(unsafe_code)]
    pub unsafe fn tune() {
        for option in [PURGE_DELAY, ARENA_EAGER_COMMIT] {
            // SAFETY: the caller guarantees no other thread exists (this function's
            // contract), so nothing reads the option while it is written;
            // `mi_option_set_default` takes an option number and a value, checks the number
            // against mimalloc's table, and has no other precondition.
            unsafe { libmimalloc_sys::mi_option_set_default(option, 0) };
        }
    }

    /// Returns to the system the memory mimalloc holds free for the calling thread, and
    /// whatever its arenas have left to purge (`mi_collect(true)`; mimalloc collects one
    /// thread's heap at a time, and takes back other threads' frees of that thread's blocks
    /// only then). Call it on the thread that allocated what was freed, after work that
    /// freed much (the writer after a store of node statistics, a rebuild, the end of an
    /// import), not per request. Where the process does not allocate with mimalloc (the
    /// library's tests), there is nothing to collect.
    pub fn give_back() {
        // SAFETY: `mi_collect` takes a flag and has no memory-safety precondition; it only
        // returns pages no allocation holds, and is safe to call from any thread.
        #[allow(unsafe_code)]
        unsafe {
            libmimalloc_sys::mi_collect(true)
        };
    }
}
#[cfg(feature = "mimalloc")]
pub use self::mimalloc::{ARENA_EAGER_COMMIT, PURGE_DELAY, give_back, tune};
