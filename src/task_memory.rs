//! Memory for task cells, recycled.
//!
//! Every managed task makes one allocation of its own, its cell (see
//! `task_core`), next to Tokio's. With glibc's allocator that allocation
//! was most of what management added to a spawn: glibc keeps only seven
//! free blocks of a size per thread, so a burst of spawns, or of tasks
//! ending, goes through its slow paths block by block (measured: ~400
//! instructions a task, against ~10 to pop a block from a list).
//!
//! Blocks are grouped in size classes (64-byte steps up to 1 KiB, aligned
//! to 16 bytes); a cell larger or more aligned than that goes to the global
//! allocator directly. Each thread keeps up to [`LOCAL_MAX`] free blocks of
//! a class; past that it hands [`BATCH`] of them to a process-wide depot,
//! and takes a batch back from the depot when it runs dry, so a thread
//! that only spawns reuses the cells of tasks that ended on other threads,
//! at the cost of one uncontended lock per batch. What the depot would hold
//! past [`DEPOT_MAX_BYTES`] goes back to the global allocator, as do a
//! thread's blocks when it exits (to the depot first, within its bound).
//!
//! Bounds: a thread holds at most `LOCAL_MAX` blocks per class, the depot
//! at most `DEPOT_MAX_BYTES` in all; nothing else is kept.

use std::alloc::{self, Layout};
use std::cell::RefCell;
use std::ptr::NonNull;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use crate::sync::lock;

/// Size step between classes.
const CLASS_BYTES: usize = 64;
/// Classes: blocks of 64 bytes to 1 KiB.
const CLASSES: usize = 16;
/// Alignment of every block.
const ALIGN: usize = 16;
/// Blocks moved between a thread and the depot at once.
pub(crate) const BATCH: usize = 32;
/// Free blocks a thread keeps per class.
pub(crate) const LOCAL_MAX: usize = 2 * BATCH;
/// Bytes the depot keeps, all classes together.
pub(crate) const DEPOT_MAX_BYTES: usize = 2 << 20;

/// A free block (no longer anyone's, so it may cross threads).
struct Block(NonNull<u8>);

// SAFETY: a free block is plain memory that nothing else refers to.
unsafe impl Send for Block {}

/// A thread's free blocks, by class.
struct Local {
    classes: [Vec<Block>; CLASSES],
}

impl Drop for Local {
    fn drop(&mut self) {
        for (class, blocks) in self.classes.iter_mut().enumerate() {
            while !blocks.is_empty() {
                let at = blocks.len().saturating_sub(BATCH);
                deposit(class, blocks.split_off(at));
            }
        }
    }
}

thread_local! {
    static LOCAL: RefCell<Local> = const {
        RefCell::new(Local {
            classes: [const { Vec::new() }; CLASSES],
        })
    };
}

/// Full batches of free blocks, by class.
static DEPOT: [Mutex<Vec<Vec<Block>>>; CLASSES] = [const { Mutex::new(Vec::new()) }; CLASSES];
/// Bytes in the depot.
static DEPOT_BYTES: AtomicUsize = AtomicUsize::new(0);

/// The class of blocks that fits `layout`, if any.
#[inline]
fn class_of(layout: Layout) -> Option<usize> {
    if layout.align() > ALIGN || layout.size() == 0 {
        return None;
    }
    let class = (layout.size() - 1) / CLASS_BYTES;
    (class < CLASSES).then_some(class)
}

/// The layout of every block of `class`.
fn class_layout(class: usize) -> Layout {
    // A multiple of the alignment, far below `isize::MAX`: always valid.
    Layout::from_size_align((class + 1) * CLASS_BYTES, ALIGN).expect("class layouts are valid")
}

/// Memory for a value of `layout` (not zero-sized): a recycled block of
/// its class where there is one. Never null: out of memory is handled as
/// `Box` handles it.
#[inline]
pub(crate) fn allocate(layout: Layout) -> NonNull<u8> {
    let Some(class) = class_of(layout) else {
        return system_allocate(layout);
    };
    let reused = LOCAL
        .try_with(|local| {
            let mut local = local.try_borrow_mut().ok()?;
            let blocks = &mut local.classes[class];
            if blocks.is_empty() {
                refill(class, blocks);
            }
            blocks.pop()
        })
        .ok()
        .flatten();
    match reused {
        Some(block) => block.0,
        None => system_allocate(class_layout(class)),
    }
}

/// Returns memory from [`allocate`] with the same `layout`.
///
/// # Safety
/// `ptr` must come from `allocate(layout)`, and nothing may use it after.
#[inline]
pub(crate) unsafe fn release(ptr: NonNull<u8>, layout: Layout) {
    let Some(class) = class_of(layout) else {
        // SAFETY: allocated with this layout by the global allocator (see
        // `allocate`), and no longer used, as the caller guarantees.
        unsafe { alloc::dealloc(ptr.as_ptr(), layout) };
        return;
    };
    let kept = LOCAL
        .try_with(|local| {
            let Ok(mut local) = local.try_borrow_mut() else {
                return false;
            };
            let blocks = &mut local.classes[class];
            if blocks.len() == LOCAL_MAX {
                deposit(class, blocks.split_off(LOCAL_MAX - BATCH));
            }
            blocks.push(Block(ptr));
            true
        })
        .unwrap_or(false);
    if !kept {
        // SAFETY: a block of this class, from the global allocator.
        unsafe { alloc::dealloc(ptr.as_ptr(), class_layout(class)) };
    }
}

fn system_allocate(layout: Layout) -> NonNull<u8> {
    // SAFETY: `layout` is not zero-sized (see `allocate`'s contract).
    let ptr = unsafe { alloc::alloc(layout) };
    NonNull::new(ptr).unwrap_or_else(|| alloc::handle_alloc_error(layout))
}

/// Takes a batch of `class` from the depot into a thread's empty list.
#[cold]
fn refill(class: usize, blocks: &mut Vec<Block>) {
    let Some(batch) = lock(&DEPOT[class]).pop() else {
        return;
    };
    DEPOT_BYTES.fetch_sub(batch.len() * class_layout(class).size(), Relaxed);
    *blocks = batch;
}

/// Hands a batch of `class` to the depot, or back to the global allocator
/// if the depot is full.
#[cold]
fn deposit(class: usize, batch: Vec<Block>) {
    let layout = class_layout(class);
    let bytes = batch.len() * layout.size();
    if DEPOT_BYTES.fetch_add(bytes, Relaxed) + bytes <= DEPOT_MAX_BYTES {
        lock(&DEPOT[class]).push(batch);
        return;
    }
    DEPOT_BYTES.fetch_sub(bytes, Relaxed);
    for block in batch {
        // SAFETY: every block of `class` was allocated with its layout by
        // the global allocator, and a free block is no one's.
        unsafe { alloc::dealloc(block.0.as_ptr(), layout) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depot_blocks(class: usize) -> usize {
        lock(&DEPOT[class]).iter().map(Vec::len).sum()
    }

    fn local_blocks(class: usize) -> usize {
        LOCAL.with(|l| l.borrow().classes[class].len())
    }

    #[test]
    fn classes_cover_small_aligned_layouts_only() {
        let l = |size, align| Layout::from_size_align(size, align).unwrap();
        assert_eq!(class_of(l(1, 8)), Some(0));
        assert_eq!(class_of(l(64, 16)), Some(0));
        assert_eq!(class_of(l(65, 8)), Some(1));
        assert_eq!(class_of(l(1024, 8)), Some(15));
        assert_eq!(class_of(l(1025, 8)), None);
        assert_eq!(class_of(l(64, 32)), None);
        assert_eq!(class_of(l(0, 1)), None);
        for class in 0..CLASSES {
            assert_eq!(class_of(class_layout(class)), Some(class));
        }
    }

    #[test]
    fn a_released_block_is_reused_by_the_same_thread() {
        // Runs on a thread of its own: its list starts empty.
        std::thread::spawn(|| {
            let layout = Layout::from_size_align(200, 8).unwrap();
            let first = allocate(layout);
            // SAFETY: from `allocate(layout)`, and not used again.
            unsafe { release(first, layout) };
            let again = allocate(layout);
            assert_eq!(again, first);
            // SAFETY: as above.
            unsafe { release(again, layout) };
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_thread_keeps_a_bounded_list_and_passes_batches_on() {
        // Class 14 (897..=960 bytes) is used by this test alone.
        let layout = Layout::from_size_align(900, 8).unwrap();
        let class = class_of(layout).unwrap();
        let produced = std::thread::spawn(move || {
            let blocks: Vec<_> = (0..LOCAL_MAX + BATCH + 1)
                .map(|_| allocate(layout).as_ptr() as usize)
                .collect();
            for &b in &blocks {
                // SAFETY: each from `allocate(layout)`, released once.
                unsafe { release(NonNull::new(b as *mut u8).unwrap(), layout) };
                assert!(local_blocks(class) <= LOCAL_MAX);
            }
            blocks
        })
        .join()
        .unwrap();
        // The thread's exit handed the rest to the depot; another thread
        // that allocates reuses them, batch by batch.
        assert_eq!(depot_blocks(class), produced.len());
        std::thread::spawn(move || {
            let reused: Vec<_> = (0..produced.len()).map(|_| allocate(layout)).collect();
            for b in &reused {
                let b = b.as_ptr() as usize;
                assert!(produced.contains(&b), "a new block, with the depot full");
            }
            assert_eq!(depot_blocks(class), 0);
            for b in reused {
                // SAFETY: from `allocate(layout)`, released once.
                unsafe { release(b, layout) };
            }
        })
        .join()
        .unwrap();
    }

    #[test]
    fn large_and_overaligned_layouts_use_the_global_allocator() {
        for layout in [
            Layout::from_size_align(4096, 8).unwrap(),
            Layout::from_size_align(64, 64).unwrap(),
        ] {
            let p = allocate(layout);
            assert_eq!(p.as_ptr() as usize % layout.align(), 0);
            // SAFETY: from `allocate(layout)`, not used again.
            unsafe { release(p, layout) };
        }
    }
}
