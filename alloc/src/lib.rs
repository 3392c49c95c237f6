//! The global allocator of the ReskFlow binaries: mimalloc, entered through its plain functions
//! whenever they already give the alignment a layout asks for.
//!
//! The `mimalloc` crate's `GlobalAlloc` calls `mi_malloc_aligned` for every allocation. In mimalloc
//! v3 that entry point takes its fast path only for blocks up to 1 KiB; a larger block whose size
//! class is not a power of two goes through `mi_theap_malloc_zero_aligned_at_overalloc` even when
//! asked for 8-byte alignment, which allocates `size + align - 1`, marks the page as holding interior
//! pointers (slowing every later free on it) and costs 150-350 instructions instead of ~20. The
//! proxies allocate several such blocks per request (boxed request futures, read buffers), so under
//! callgrind the allocator was 5% of a proxied request's instructions. (Known upstream:
//! purpleprotocol/mimalloc_rust PR #170.)
//!
//! Every mimalloc block is aligned to 16 bytes (`MI_MAX_ALIGN_SIZE`) when its size is a multiple of
//! 16, and to 8 otherwise (size classes are multiples of 8; a page's first block is 16-aligned). So a
//! layout whose alignment is at most 16 and divides its size is served by `mi_malloc` as it is;
//! anything else keeps the aligned functions. The tests check both the alignment and that the
//! aligned path is still taken where it must be.

#![no_std]

use core::alloc::{GlobalAlloc, Layout};
use core::ffi::c_void;

use libmimalloc_sys as ffi;

/// mimalloc's guaranteed alignment for blocks whose size is a multiple of it.
const MAX_PLAIN_ALIGN: usize = 16;

/// mimalloc as the global allocator (`#[global_allocator] static A: Allocator = Allocator;`).
pub struct Allocator;

/// Whether `mi_malloc(size)` already returns memory aligned to `align`.
#[inline(always)]
const fn plain(size: usize, align: usize) -> bool {
    align <= MAX_PLAIN_ALIGN && size.is_multiple_of(align)
}

// SAFETY: every method hands the layout's size and alignment to mimalloc's matching function:
// the plain ones only where `plain` shows their blocks already have the alignment (see the module
// documentation), the aligned ones otherwise. Blocks from either are freed with `mi_free`, which
// accepts both, and grown with `mi_realloc` / `mi_realloc_aligned`, which keep the alignment.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if plain(layout.size(), layout.align()) {
            // SAFETY: mimalloc's malloc has no preconditions; null on failure as GlobalAlloc wants.
            unsafe { ffi::mi_malloc(layout.size()).cast() }
        } else {
            // SAFETY: a Layout's alignment is a nonzero power of two, as mimalloc requires.
            unsafe { ffi::mi_malloc_aligned(layout.size(), layout.align()).cast() }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if plain(layout.size(), layout.align()) {
            // SAFETY: as in `alloc`.
            unsafe { ffi::mi_zalloc(layout.size()).cast() }
        } else {
            // SAFETY: as in `alloc`.
            unsafe { ffi::mi_zalloc_aligned(layout.size(), layout.align()).cast() }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: the caller passes a block this allocator returned, i.e. one of mimalloc's.
        unsafe { ffi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if plain(new_size, layout.align()) {
            // SAFETY: `ptr` is one of mimalloc's blocks (caller's contract); the new block has the
            // alignment by `plain`.
            unsafe { ffi::mi_realloc(ptr.cast::<c_void>(), new_size).cast() }
        } else {
            // SAFETY: as above, with the alignment asked of mimalloc explicitly.
            unsafe { ffi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast() }
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    fn aligned(p: *mut u8, align: usize) -> bool {
        !p.is_null() && (p as usize).is_multiple_of(align)
    }

    #[test]
    fn every_size_and_alignment_is_honoured() {
        let a = Allocator;
        let mut sizes: Vec<usize> = (1..=2048).collect();
        sizes.extend((2049..=300_000).step_by(997));
        for &size in &sizes {
            for align in [1, 2, 4, 8, 16, 32, 64, 128, 4096] {
                let Ok(layout) = Layout::from_size_align(size, align) else { continue };
                // SAFETY: a nonzero-size layout; the block is freed with the same layout.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(aligned(p, align), "size {size} align {align}: {p:?}");
                    p.write_bytes(0xa5, size);
                    let z = a.alloc_zeroed(layout);
                    assert!(aligned(z, align), "zeroed size {size} align {align}: {z:?}");
                    assert!(core::slice::from_raw_parts(z, size).iter().all(|&b| b == 0));
                    a.dealloc(z, layout);
                    let grown = size * 2 + 8;
                    let q = a.realloc(p, layout, grown);
                    assert!(aligned(q, align), "realloc {size}->{grown} align {align}: {q:?}");
                    assert!(core::slice::from_raw_parts(q, size).iter().all(|&b| b == 0xa5), "contents kept");
                    a.dealloc(q, Layout::from_size_align(grown, align).expect("valid layout"));
                }
            }
        }
    }

    #[test]
    fn only_layouts_the_plain_functions_satisfy_take_them() {
        assert!(plain(24, 8));
        assert!(plain(48, 16));
        assert!(plain(1500, 4));
        assert!(!plain(24, 16), "a 24-byte block may sit at an 8-byte boundary");
        assert!(!plain(64, 32));
        assert!(!plain(4096, 4096));
    }
}
