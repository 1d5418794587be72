//! The slow lane: where tasks in the `Yield` tier wait their turn.
//!
//! A `Yield`-tier task may only be polled while it holds one of the lane's
//! slots, and the lane has few: by default half the machine's cores, at
//! least one. However many hogs there are, they can then occupy at most
//! that share of the workers together, and the rest stay free for
//! well-behaved tasks. The wrapper also defers every lane task behind other
//! ready work (and the timer and I/O drivers) before it asks for a slot.
//!
//! Fairness among waiting tasks is deficit round robin by measured poll
//! time: each turn a task's deficit grows by a quantum, each poll it spends
//! what the poll took, and a task in debt passes its turn on. A task whose
//! polls take 20 ms thus runs a tenth as often as one whose polls take 2 ms,
//! and both get about the same worker time.
//!
//! Lock-free: a slot counter and a bounded MPMC queue of waiting tasks,
//! allocated once. A waiting task's entry is its shared state (`Arc` clone,
//! no allocation); it is queued at most once at a time.

use std::sync::Arc;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};

use crate::sync::{AtomicBool, AtomicI64, AtomicU8, AtomicUsize, BoundedQueue, WakerSlot, fence};

/// A task's place in the slow lane's wait queue, made when the task first
/// waits there (see `TaskShared::lane`).
///
/// Whether the task holds an offer and whether it has ended are one atomic
/// state changed only by read-modify-write operations, so the lane offering
/// a slot and the wrapper being dropped at the same moment always agree on
/// who passes the offer on (a pair of flags would need sequentially
/// consistent store-load ordering, which the loom model showed to be
/// fragile).
#[derive(Debug, Default)]
pub(crate) struct LaneEntry {
    /// Woken when the lane has room.
    waker: WakerSlot,
    /// The task is in the wait queue (so it is pushed at most once).
    queued: AtomicBool,
    state: AtomicU8,
}

const LANE_IDLE: u8 = 0;
const LANE_OFFERED: u8 = 1;
const LANE_ENDED: u8 = 2;

impl LaneEntry {
    /// Offers the task a slot; `false` if it has ended (or holds one).
    fn offer(&self) -> bool {
        self.state
            .compare_exchange(LANE_IDLE, LANE_OFFERED, SeqCst, SeqCst)
            .is_ok()
    }

    /// Takes the offer the task holds, if any.
    pub(crate) fn take_offer(&self) -> bool {
        self.state
            .compare_exchange(LANE_OFFERED, LANE_IDLE, SeqCst, SeqCst)
            .is_ok()
    }

    /// Marks the task ended; `true` if it held an offer it must pass on.
    pub(crate) fn end(&self) -> bool {
        self.state.swap(LANE_ENDED, SeqCst) == LANE_OFFERED
    }

    #[cfg(all(test, not(pulse_loom)))]
    pub(crate) fn is_offered(&self) -> bool {
        self.state.load(SeqCst) == LANE_OFFERED
    }
}

/// Waiting tasks the queue holds; past that, tasks fall back to plain
/// deferral (they still give way, without the lane's ordering).
const QUEUE_CAPACITY: usize = 16 * 1024;

#[derive(Debug)]
pub(crate) struct SlowLane {
    slots: AtomicUsize,
    running: AtomicUsize,
    waiting: BoundedQueue<Arc<LaneEntry>>,
    /// Deficit round robin quantum, in nanoseconds of poll time.
    quantum_ns: AtomicI64,
}

/// What [`SlowLane::wait`] did.
#[must_use]
pub(crate) enum Wait<'a> {
    /// A slot freed while the task queued: it holds it now.
    Entered(LaneSlot<'a>),
    /// Queued: the task is woken with an offer when a slot frees.
    Queued,
    /// The queue is full: the task was not queued, and should fall back
    /// to plain deferral.
    Full,
}

/// A held slot; dropping it releases the slot and offers it to the next
/// waiting task (also when the poll panics).
#[must_use]
pub(crate) struct LaneSlot<'a> {
    lane: &'a SlowLane,
}

impl Drop for LaneSlot<'_> {
    fn drop(&mut self) {
        self.lane.running.fetch_sub(1, SeqCst);
        fence(SeqCst);
        self.lane.offer_next();
    }
}

impl SlowLane {
    pub(crate) fn new(slots: usize, quantum_ns: i64) -> Self {
        SlowLane {
            slots: AtomicUsize::new(slots),
            running: AtomicUsize::new(0),
            waiting: BoundedQueue::new(QUEUE_CAPACITY),
            quantum_ns: AtomicI64::new(quantum_ns),
        }
    }

    pub(crate) fn set_slots(&self, slots: usize) {
        self.slots.store(slots, SeqCst);
        // More room may mean waiting tasks can go now.
        self.offer_next();
    }

    #[cfg(test)]
    pub(crate) fn slots(&self) -> usize {
        self.slots.load(SeqCst)
    }

    pub(crate) fn quantum_ns(&self) -> i64 {
        self.quantum_ns.load(Relaxed)
    }

    pub(crate) fn set_quantum_ns(&self, quantum_ns: i64) {
        self.quantum_ns.store(quantum_ns, Relaxed);
    }

    /// Takes a slot if one is free.
    pub(crate) fn try_enter(&self) -> Option<LaneSlot<'_>> {
        let slots = self.slots.load(SeqCst);
        let mut running = self.running.load(SeqCst);
        while running < slots {
            match self
                .running
                .compare_exchange_weak(running, running + 1, SeqCst, SeqCst)
            {
                Ok(_) => return Some(LaneSlot { lane: self }),
                Err(now) => running = now,
            }
        }
        None
    }

    /// Queues `task` to be woken when a slot frees, then checks once more
    /// for a slot freed meanwhile (so no release can go unnoticed).
    pub(crate) fn wait(&self, task: &Arc<LaneEntry>, waker: &std::task::Waker) -> Wait<'_> {
        task.waker.register(waker);
        if !task.queued.swap(true, SeqCst) && self.waiting.push(Arc::clone(task)).is_err() {
            task.queued.store(false, SeqCst);
            return Wait::Full;
        }
        fence(SeqCst);
        match self.try_enter() {
            Some(slot) => Wait::Entered(slot),
            None => Wait::Queued,
        }
    }

    /// Wakes the first waiting task that is still alive, offering it a slot.
    pub(crate) fn offer_next(&self) {
        if self.running.load(SeqCst) >= self.slots.load(SeqCst) {
            return;
        }
        while let Some(task) = self.waiting.pop() {
            task.queued.store(false, SeqCst);
            // Skips tasks that have ended since they queued.
            if task.offer() {
                task.waker.wake();
                return;
            }
        }
    }

    /// Tasks waiting for a slot.
    pub(crate) fn queue_depth(&self) -> usize {
        self.waiting.len()
    }

    /// Lane polls running now.
    pub(crate) fn running(&self) -> usize {
        self.running.load(SeqCst)
    }
}

#[cfg(all(test, not(pulse_loom)))]
mod tests {
    use super::*;
    use std::task::{Wake, Waker};

    struct CountWakes(std::sync::atomic::AtomicUsize);
    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Relaxed);
        }
    }

    fn task() -> Arc<LaneEntry> {
        Arc::default()
    }

    #[test]
    fn slots_cap_concurrent_polls_and_release_wakes_a_waiter() {
        let lane = SlowLane::new(1, 1_000_000);
        let a = lane.try_enter().expect("first slot");
        assert!(
            lane.try_enter().is_none(),
            "second poll admitted past the cap"
        );
        let wakes = Arc::new(CountWakes(AtomicUsize::new(0)));
        let waker = Waker::from(wakes.clone());
        let t = task();
        assert!(matches!(lane.wait(&t, &waker), Wait::Queued));
        assert_eq!(lane.queue_depth(), 1);
        drop(a);
        assert_eq!(wakes.0.load(Relaxed), 1, "release did not wake the waiter");
        assert!(t.is_offered());
        assert!(lane.try_enter().is_some());
    }

    #[test]
    fn a_task_is_queued_once_however_often_it_waits() {
        let lane = SlowLane::new(1, 1_000_000);
        let _held = lane.try_enter().unwrap();
        let t = task();
        for _ in 0..10 {
            assert!(matches!(lane.wait(&t, Waker::noop()), Wait::Queued));
        }
        assert_eq!(lane.queue_depth(), 1);
    }

    #[test]
    fn ended_tasks_are_skipped_when_a_slot_frees() {
        let lane = SlowLane::new(1, 1_000_000);
        let held = lane.try_enter().unwrap();
        let (dead, alive) = (task(), task());
        let wakes = Arc::new(CountWakes(AtomicUsize::new(0)));
        assert!(matches!(lane.wait(&dead, Waker::noop()), Wait::Queued));
        assert!(matches!(
            lane.wait(&alive, &Waker::from(wakes.clone())),
            Wait::Queued
        ));
        assert!(!dead.end());
        drop(held);
        assert_eq!(wakes.0.load(Relaxed), 1);
        assert!(alive.is_offered());
        assert!(!dead.is_offered());
    }
}

/// Model checks of the lane's protocol: `RUSTFLAGS="--cfg pulse_loom"
/// cargo test --lib --release loom`. Each explores every interleaving of
/// its threads that the C11 memory model allows.
#[cfg(all(test, pulse_loom))]
mod loom_models {
    use super::*;
    use loom::thread;
    use std::task::{Wake, Waker};

    struct Flag(AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, SeqCst);
        }
    }

    fn flag_waker() -> (Arc<Flag>, Waker) {
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        (flag.clone(), Waker::from(flag))
    }

    fn task() -> Arc<LaneEntry> {
        Arc::default()
    }

    /// A task that finds the lane full and waits is never forgotten: it
    /// either takes the slot freed meanwhile or is woken with an offer.
    #[test]
    fn loom_a_waiting_task_never_misses_a_released_slot() {
        loom::model(|| {
            let lane = Arc::new(SlowLane::new(1, 1));
            let held = lane.try_enter().unwrap();
            let (woken, waker) = flag_waker();
            let (l, t) = (lane.clone(), task());
            let waiter = thread::spawn(move || match l.wait(&t, &waker) {
                Wait::Entered(_) => true,
                Wait::Queued => false,
                Wait::Full => unreachable!("queue cannot be full"),
            });
            drop(held);
            let took_slot = waiter.join().unwrap();
            assert!(
                took_slot || woken.0.load(SeqCst),
                "released slot went unnoticed"
            );
        });
    }

    /// With one slot, two tasks never poll in the lane at the same time.
    #[test]
    fn loom_slots_cap_concurrent_polls() {
        loom::model(|| {
            let lane = Arc::new(SlowLane::new(1, 1));
            let inside = Arc::new(AtomicUsize::new(0));
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    let (lane, inside) = (lane.clone(), inside.clone());
                    thread::spawn(move || {
                        if let Some(slot) = lane.try_enter() {
                            assert_eq!(
                                inside.fetch_add(1, SeqCst),
                                0,
                                "two polls in a one-slot lane"
                            );
                            inside.fetch_sub(1, SeqCst);
                            drop(slot);
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            assert_eq!(lane.running(), 0);
        });
    }

    /// An offer made to a task that is dropped at the same moment reaches
    /// the next waiting task (the wrapper's `Drop` passes it on).
    #[test]
    fn loom_an_offer_to_a_dropped_task_passes_to_the_next() {
        loom::model(|| {
            let lane = Arc::new(SlowLane::new(1, 1));
            let held = lane.try_enter().unwrap();
            let (doomed, next) = (task(), task());
            let (_, doomed_waker) = flag_waker();
            let (next_woken, next_waker) = flag_waker();
            assert!(matches!(lane.wait(&doomed, &doomed_waker), Wait::Queued));
            assert!(matches!(lane.wait(&next, &next_waker), Wait::Queued));
            let l = lane.clone();
            let dropper = thread::spawn(move || {
                // What `Managed::drop` does.
                if doomed.end() {
                    l.offer_next();
                }
            });
            drop(held);
            dropper.join().unwrap();
            assert!(
                next_woken.0.load(SeqCst),
                "the offer was lost with the dropped task"
            );
        });
    }
}
