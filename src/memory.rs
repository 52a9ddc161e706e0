//! The binary's allocator, mimalloc (`src/main.rs`): the settings it starts with
//! (`tune`) and giving freed memory back to the system after large transient work
//! (`give_back`).
//!
//! Why mimalloc and these settings, measured on the 10,000-member benchmark (`bench
//! community`, docs/ARCHITECTURE.md): with glibc's allocator, `malloc`, `free` and their
//! helpers were a quarter of the writer thread's samples during the import (the node's
//! pending statistics are hash maps of millions of small entries, built and dropped at
//! every store), and the import took 149–155 s; with mimalloc, tuned here, 107.8 s. glibc also needed
//! its own tuning to give memory back (a fixed mmap threshold, few arenas,
//! `malloc_trim` after each store of node statistics), which a past version of this
//! module did.
//!
//! mimalloc's defaults keep freed pages for a second and commit its arenas eagerly;
//! the import then peaked at 503 MiB and the node at rest held 375. The two options set
//! by `tune` return freed pages at once.

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
