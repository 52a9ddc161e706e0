//! hearsay's one change to sled 0.34.7 (see `vendor/README.md`): page compression
//! and decompression reuse one zstd context per thread.
//!
//! sled 0.34.7 called `zstd::block::compress` for every page it logs and
//! `zstd::stream::decode_all` for every page it reads back, and each call creates a
//! fresh zstd context (allocating and initialising its tables), plus, for
//! `decode_all`, a streaming reader and a growing output buffer. On a write-heavy
//! store larger than the page cache, creating contexts took more time than
//! compressing. The bytes are the same: `zstd::block::compress` is exactly
//! `Compressor::new().compress(..)`, and a context used again starts each frame from
//! the same parameters.

use std::cell::RefCell;
use std::convert::TryFrom;
use std::io;

use zstd::block::{Compressor, Decompressor};

thread_local! {
    static COMPRESSOR: RefCell<Compressor> = RefCell::new(Compressor::new());
    static DECOMPRESSOR: RefCell<Decompressor> = RefCell::new(Decompressor::new());
}

/// Largest page this takes in one piece (its size read from the frame header);
/// anything larger, or a frame that does not say, is streamed as before.
const ONE_PIECE_MAX: u64 = 64 << 20;

/// One zstd frame of `data` at `level`, as `zstd::block::compress` makes it.
pub(crate) fn compress(data: &[u8], level: i32) -> io::Result<Vec<u8>> {
    COMPRESSOR
        .try_with(|c| match c.try_borrow_mut() {
            Ok(mut c) => c.compress(data, level),
            // Not reentrant in practice; a fresh context if it ever is.
            Err(_) => zstd::block::compress(data, level),
        })
        // The thread is exiting and its context is gone.
        .unwrap_or_else(|_| zstd::block::compress(data, level))
}

/// Every frame in `data`, decompressed (as `zstd::stream::decode_all`).
pub(crate) fn decompress(data: &[u8]) -> io::Result<Vec<u8>> {
    let size = zstd::zstd_safe::get_frame_content_size(data);
    // `get_frame_content_size` answers these two values for "unknown" and "error"
    // (`ZSTD_CONTENTSIZE_UNKNOWN`, `ZSTD_CONTENTSIZE_ERROR`).
    if size >= u64::MAX - 1 || size > ONE_PIECE_MAX {
        return zstd::stream::decode_all(data);
    }
    let Ok(capacity) = usize::try_from(size) else {
        return zstd::stream::decode_all(data);
    };
    let one_piece = |d: &mut Decompressor| -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(capacity);
        d.decompress_to_buffer(data, &mut out)?;
        Ok(out)
    };
    let answer = DECOMPRESSOR
        .try_with(|d| match d.try_borrow_mut() {
            Ok(mut d) => one_piece(&mut d),
            Err(_) => one_piece(&mut Decompressor::new()),
        })
        .unwrap_or_else(|_| one_piece(&mut Decompressor::new()));
    match answer {
        Ok(out) => Ok(out),
        // The frame's header said less than it holds (several frames in a row,
        // say): the streaming decoder reads them all, as before.
        Err(_) => zstd::stream::decode_all(data),
    }
}
