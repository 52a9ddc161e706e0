//! The binary's allocator, mimalloc (`src/main.rs`): the settings it starts with
//! (`tune`) and giving freed memory back to the system after large transient work
//! (`give_back`).
//!
//! Why mimalloc and these settings, measured on the 10,000-member benchmark (`bench
//! community`, docs/ARCHITECTURE.md): with glibc's allocator, `malloc`, `free` and their
//! helpers were a quarter of the writer thread's samples during the import (the node's
//! pending statistics are hash maps of millions of small entries, built and dropped at
//! every store), and the import took 149–155 s; with mimalloc 109 s. glibc also needed
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

/// Sets mimalloc up for a long-running node, unless the operator's environment
/// (`MIMALLOC_PURGE_DELAY`, `MIMALLOC_ARENA_EAGER_COMMIT`) already decides.
///
/// - Freed pages are purged (returned to the system) at once, not after a second:
///   the node's pending statistics free tens of MiB at each store.
/// - Arenas are committed as they are used, not in advance (the purges of an eagerly
///   committed arena left the import's peak at 503 MiB, against 457 with glibc).
///
/// The binary runs it before `main` (`src/main.rs`): the first allocation reserves
/// mimalloc's first arena, and the commit option only applies to arenas reserved after
/// it is set. So it allocates nothing itself (`getenv`, not `std::env`).
pub fn tune() {
    let options = [(PURGE_DELAY, c"MIMALLOC_PURGE_DELAY"), (ARENA_EAGER_COMMIT, c"MIMALLOC_ARENA_EAGER_COMMIT")];
    for (option, name) in options {
        // SAFETY: `getenv` reads the environment with a NUL-terminated name and returns
        // a pointer only compared with null here; before `main` no other thread exists
        // to change the environment meanwhile. `mi_option_set` takes an option number
        // and a value and has no memory-safety precondition (mimalloc's options are
        // atomics read when used).
        #[allow(unsafe_code)]
        unsafe {
            if libc::getenv(name.as_ptr()).is_null() {
                libmimalloc_sys::mi_option_set(option, 0);
            }
        }
    }
}

/// Returns the memory mimalloc holds free to the system (`mi_collect(true)`): call it
/// after work that freed much (a store of node statistics, the end of an import), not
/// per request. Where the process does not allocate with mimalloc (the library's
/// tests), there is nothing to collect.
pub fn give_back() {
    // SAFETY: `mi_collect` takes a flag and has no memory-safety precondition; it only
    // returns pages no allocation holds, and is safe to call from any thread.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_collect(true)
    };
}
