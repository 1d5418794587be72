//! The engine's ticker: a coarse clock that polls read instead of the
//! precise one.
//!
//! Reading the time-stamp counter twice per poll was most of what a managed
//! poll cost, and the best schedulers read no clock per task switch at all
//! (Go's `sysmon` samples per-P tick counters; Seastar's `need_preempt` is a
//! load of a word a timer advances). So a thread of the engine advances a
//! tick count and publishes the time of each tick; a poll notes the tick
//! when it starts and compares when it ends. A poll that saw no tick go by
//! was shorter than one tick period and reads no clock at all. Only a poll
//! that spanned a tick reads the precise clock, and is judged by how long
//! it certainly ran: from the first tick after its start to its end (a
//! lower bound, short of the truth by less than one period, so that no
//! task is ever blamed for more than it did).
//!
//! # Pace
//!
//! A tick costs the ticker thread a wake-up, and on a virtual machine a
//! wake-up is dear (about 12 µs of CPU on the one this was written on), so
//! the period adapts:
//!
//! - **fine**, a quarter of the slow-poll threshold, while long polls are
//!   about: a poll that outlasts a tick asks for it, and it stays for a
//!   while after the last one. This is the resolution long polls are judged
//!   at.
//! - **coarse**, four times the slow-poll threshold, while polls run but
//!   all are short: nothing to resolve finely, and a sixteenth of the
//!   wake-ups. A long poll starting in this pace is measured to within one
//!   coarse period, and when it ends it switches the pace to fine for the
//!   polls after it (a hog is judged finely from its second long poll on;
//!   a lone slow poll may go unseen).
//! - **idle**: no managed poll since the last ticks, so the period doubles,
//!   up to [`IDLE_PERIOD`], and the tick word carries a flag that the next
//!   poll to start sees: it wakes the ticker, which goes back to fine.
//!
//! A tick also runs the watchdog's scan (see `watchdog`), which reads the
//! thread slots the polls publish in (see `context`).
//!
//! # Stalls
//!
//! The ticker also notes how late it wakes: a wake-up more than
//! [`STALL_SLACK`] past its period means the ticker could not run, and as
//! it shares the process's CPU quota and host with the workers, neither
//! could they, most likely: a quota throttled the cgroup, the VM was
//! paused. The total is what a poll that was *blocked* meanwhile is not
//! charged for (see `schedstat::charged`): a worker blocked then is most
//! likely waiting for a lock held by a thread the stall stopped. Time the
//! ticker spends awake on a tick's own work (a watchdog report's stack
//! capture loads debug information, up to a second) is not a stall: a
//! stall is only counted past the time its sleep was due to end.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::thread::Thread;
use std::time::Duration;

use crossbeam_utils::CachePadded;

/// Tick times kept: a poll spanning fewer ticks than this finds the time of
/// the first tick after its start here.
pub(crate) const RING: u64 = 64;

/// The tick word's low bit: the ticker is idle and wants waking.
const IDLE: u64 = 1;

/// The longest an idle ticker sleeps: a stuck poll that starts while the
/// ticker sleeps (the rare race its wake-up flag cannot close, see
/// [`Ticker::wake`]) is still seen within this. Four wake-ups a second cost
/// an idle `Pulse` next to nothing.
pub(crate) const IDLE_PERIOD: Duration = Duration::from_millis(250);

/// How long the pace stays fine after the last long poll.
const FINE_HOLD: Duration = Duration::from_millis(250);

/// Ticks with no managed poll before the ticker starts backing off.
const IDLE_TICKS: u32 = 8;

/// How late past its period the ticker may wake and still count as on
/// time: timer slack and an ordinary wake-up on a loaded host are well
/// under it, a quota throttle (tens of milliseconds) well over.
pub(crate) const STALL_SLACK: Duration = Duration::from_millis(1);

/// The tick count and the time of recent ticks.
#[derive(Debug)]
pub(crate) struct Ticker {
    /// Read by every poll, written once per tick.
    hot: CachePadded<Hot>,
    /// `ring[k % RING]` is the time of tick `k`. Read by polls that
    /// spanned a tick.
    ring: CachePadded<[AtomicU64; RING as usize]>,
    /// Set by a poll that measured itself long: the ticker should tick
    /// finely. On a line of its own: written rarely, by pollers.
    wants_fine: CachePadded<AtomicBool>,
    /// The ticker thread, for [`wake`](Ticker::wake).
    thread: OnceLock<Thread>,
}

#[derive(Debug)]
struct Hot {
    /// `count << 1 | IDLE`.
    word: AtomicU64,
    /// The time of the latest tick: a coarse "now".
    latest_ns: AtomicU64,
    /// The slow-poll threshold in force, for `checkpoint`'s slices.
    slow_poll_ns: AtomicU64,
    /// The pace is fine: ticks come a quarter threshold apart.
    fine: AtomicBool,
    /// The period the ticker sleeps now.
    period_ns: AtomicU64,
    /// How long the ticker has been stalled so far, in total: the time it
    /// woke late, past its period and [`STALL_SLACK`].
    stalled_ns: AtomicU64,
    /// When the ticker is due to wake from its sleep; `u64::MAX` while it
    /// is awake, doing a tick's work (a stack capture can take it most of
    /// a second, and that is no stall of the process).
    due_ns: AtomicU64,
}

/// A reading of the tick word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Tick(u64);

impl Tick {
    /// The (not idle) tick with this count.
    #[inline]
    pub(crate) fn from_count(count: u64) -> Tick {
        Tick(count << 1)
    }

    /// The tick count.
    #[inline]
    pub(crate) fn count(self) -> u64 {
        self.0 >> 1
    }

    /// Whether the ticker was idle (and must be woken).
    #[inline]
    pub(crate) fn idle(self) -> bool {
        self.0 & IDLE != 0
    }
}

impl Ticker {
    pub(crate) fn new(now_ns: u64) -> Self {
        let ticker = Ticker {
            hot: CachePadded::new(Hot {
                word: AtomicU64::new(0),
                latest_ns: AtomicU64::new(now_ns),
                slow_poll_ns: AtomicU64::new(u64::MAX),
                fine: AtomicBool::new(false),
                period_ns: AtomicU64::new(0),
                stalled_ns: AtomicU64::new(0),
                due_ns: AtomicU64::new(u64::MAX),
            }),
            ring: CachePadded::new(std::array::from_fn(|_| AtomicU64::new(now_ns))),
            wants_fine: CachePadded::new(AtomicBool::new(false)),
            thread: OnceLock::new(),
        };
        ticker.ring[0].store(now_ns, Relaxed);
        ticker
    }

    /// The current tick. `Acquire`: a poll that sees tick `k` sees the
    /// ring's times up to `k` (a plain load on x86-64).
    #[inline(always)]
    pub(crate) fn read(&self) -> Tick {
        Tick(self.hot.word.load(Acquire))
    }

    /// The time of the latest tick: now, give or take a period.
    #[inline(always)]
    pub(crate) fn latest_ns(&self) -> u64 {
        self.hot.latest_ns.load(Relaxed)
    }

    /// The time of tick `count`, if it is still in the ring as of `now`
    /// (a tick read after `count`'s).
    #[inline]
    pub(crate) fn time_of(&self, count: u64, now: Tick) -> Option<u64> {
        // The ticker may be writing tick `now + 1` at this moment, which
        // overwrites the slot of `now + 1 - RING`.
        let age = now.count().checked_sub(count)?;
        (age < RING - 1).then(|| self.ring[(count % RING) as usize].load(Relaxed))
    }

    /// Advances the tick to a tick at `now_ns`, idle or not.
    pub(crate) fn advance(&self, now_ns: u64, idle: bool) {
        let count = self.read().count() + 1;
        self.ring[(count % RING) as usize].store(now_ns, Relaxed);
        self.hot.latest_ns.store(now_ns, Relaxed);
        self.hot.word.store(count << 1 | u64::from(idle), Release);
    }

    /// Called by a poll that found the ticker idle: clears the flag and
    /// wakes the ticker. One poll wins the flag; the others see it gone.
    ///
    /// A poll that starts just as the ticker goes idle may miss the flag
    /// (nothing orders the poll's slot store before its load of the tick
    /// without a fence on every poll): it then runs without fine ticks,
    /// its length is measured to within [`IDLE_PERIOD`], and the next poll
    /// wakes the ticker.
    #[cold]
    #[inline(never)]
    pub(crate) fn wake(&self, seen: Tick) {
        if self
            .hot
            .word
            .compare_exchange(seen.0, seen.0 & !IDLE, Relaxed, Relaxed)
            .is_ok()
        {
            if let Some(thread) = self.thread.get() {
                thread.unpark();
            }
        }
    }

    /// Asks for fine ticks: a poll outlasted a tick.
    #[cold]
    pub(crate) fn want_fine(&self) {
        if !self.wants_fine.load(Relaxed) {
            self.wants_fine.store(true, Relaxed);
        }
    }

    /// The ticker woke `late` past its period: counts what is past
    /// [`STALL_SLACK`] as stalled.
    pub(crate) fn woke_late(&self, late: Duration) {
        if let Some(stall) = late.checked_sub(STALL_SLACK) {
            let ns = u64::try_from(stall.as_nanos()).unwrap_or(u64::MAX);
            self.hot.stalled_ns.fetch_add(ns, Relaxed);
        }
    }

    /// The ticker's stalls so far, in total (see the module's docs).
    #[inline]
    pub(crate) fn stalled_ns(&self) -> u64 {
        self.hot.stalled_ns.load(Relaxed)
    }

    /// The ticker is awake, doing a tick's work: no stall is going on.
    pub(crate) fn working(&self) {
        self.hot.due_ns.store(u64::MAX, Relaxed);
    }

    /// The ticker goes to sleep at `now_ns` for the period the pace chose.
    pub(crate) fn sleeps_from(&self, now_ns: u64) {
        let due = now_ns.saturating_add(self.period_ns());
        self.hot.due_ns.store(due, Relaxed);
    }

    /// How long the ticker has been stalled since its total was `earlier`,
    /// as of `now_ns`: including a stall going on now (asleep for longer
    /// than its period and the slack; time it spends on a tick's own work
    /// is not a stall).
    pub(crate) fn stalled_since(&self, earlier: u64, now_ns: u64) -> u64 {
        let due = self.hot.due_ns.load(Relaxed);
        let ongoing = now_ns.saturating_sub(due.saturating_add(STALL_SLACK.as_nanos() as u64));
        self.stalled_ns()
            .saturating_sub(earlier)
            .saturating_add(ongoing)
    }

    /// The period the ticker sleeps now.
    #[inline]
    pub(crate) fn period_ns(&self) -> u64 {
        self.hot.period_ns.load(Relaxed)
    }

    /// Sets the slow-poll threshold `checkpoint` divides into slices.
    pub(crate) fn set_slow_poll(&self, slow_poll: Duration) {
        let ns = u64::try_from(slow_poll.as_nanos()).unwrap_or(u64::MAX);
        self.hot.slow_poll_ns.store(ns, Relaxed);
    }

    /// Whether a poll that started at `start` may have used its slice:
    /// half the slow-poll threshold, a quarter for a task at `Yield` or
    /// above. Measured from the tick before the start to the latest tick,
    /// an upper bound: it errs on the side of giving way early.
    #[inline]
    pub(crate) fn slice_used(&self, start: Tick, yield_slice: bool) -> bool {
        let now = self.read();
        if now.count() == start.count() {
            return false;
        }
        // A poll that checks for its slice and has outlasted a tick is a
        // long, cooperative one: its slices need fine ticks.
        if !self.hot.fine.load(Relaxed) {
            self.want_fine();
        }
        let slice = self.hot.slow_poll_ns.load(Relaxed) >> (1 + u32::from(yield_slice));
        match self.time_of(start.count(), now) {
            Some(started_before) => self.latest_ns().saturating_sub(started_before) >= slice,
            None => true,
        }
    }

    /// Records the ticker thread, so that polls can wake it.
    pub(crate) fn set_thread(&self, thread: Thread) {
        let _ = self.thread.set(thread);
    }

    /// Wakes the ticker thread now (its engine is going away).
    pub(crate) fn unpark(&self) {
        if let Some(thread) = self.thread.get() {
            thread.unpark();
        }
    }

    fn take_wants_fine(&self) -> bool {
        self.wants_fine.load(Relaxed) && self.wants_fine.swap(false, Relaxed)
    }
}

/// What one tick saw of the engine's polls.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Seen {
    /// Some managed poll started or ran since the previous tick.
    pub activity: bool,
}

/// The ticker thread's pace: how long to sleep before the next tick.
#[derive(Debug)]
pub(crate) struct Pace {
    fine_until_ns: u64,
    quiet_ticks: u32,
    idle_period: Duration,
}

impl Pace {
    pub(crate) fn new() -> Self {
        Pace {
            fine_until_ns: 0,
            quiet_ticks: 0,
            idle_period: Duration::ZERO,
        }
    }

    /// Takes in what the tick at `now_ns` saw; returns the period to sleep
    /// and whether the ticker is now idle.
    pub(crate) fn next(
        &mut self,
        ticker: &Ticker,
        seen: Seen,
        now_ns: u64,
        slow_poll: Duration,
    ) -> (Duration, bool) {
        let (period, idle) = self.choose(ticker, seen, now_ns, slow_poll);
        let ns = u64::try_from(period.as_nanos()).unwrap_or(u64::MAX);
        ticker.hot.period_ns.store(ns, Relaxed);
        (period, idle)
    }

    fn choose(
        &mut self,
        ticker: &Ticker,
        seen: Seen,
        now_ns: u64,
        slow_poll: Duration,
    ) -> (Duration, bool) {
        let fine = (slow_poll / 4).max(Duration::from_micros(50));
        let coarse = slow_poll * 4;
        // Only a poll's own measure, net of the time its thread waited for
        // a CPU, asks for fine ticks: a poll the ticker saw twice may just
        // have been descheduled.
        if ticker.take_wants_fine() {
            self.fine_until_ns = now_ns.saturating_add(FINE_HOLD.as_nanos() as u64);
        }
        if seen.activity {
            self.quiet_ticks = 0;
            self.idle_period = Duration::ZERO;
        } else {
            self.quiet_ticks = self.quiet_ticks.saturating_add(1);
        }
        if self.quiet_ticks >= IDLE_TICKS {
            ticker.hot.fine.store(false, Relaxed);
            self.idle_period = (self.idle_period.max(coarse) * 2).min(IDLE_PERIOD);
            return (self.idle_period, true);
        }
        let is_fine = now_ns < self.fine_until_ns;
        ticker.hot.fine.store(is_fine, Relaxed);
        (if is_fine { fine } else { coarse }, false)
    }

    /// The ticker was woken by a poll: tick finely for a while, so that
    /// the first polls after a quiet spell are measured finely.
    pub(crate) fn woken(&mut self, now_ns: u64) {
        self.quiet_ticks = 0;
        self.idle_period = Duration::ZERO;
        self.fine_until_ns = now_ns.saturating_add(FINE_HOLD.as_nanos() as u64 / 10);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn a_poll_reads_the_times_of_recent_ticks() {
        let t = Ticker::new(100);
        let start = t.read();
        for k in 1..=10 {
            t.advance(100 + k * MS, false);
        }
        let now = t.read();
        assert_eq!(now.count() - start.count(), 10);
        assert_eq!(t.time_of(start.count() + 1, now), Some(100 + MS));
        assert_eq!(t.latest_ns(), 100 + 10 * MS);
        for k in 0..RING {
            t.advance(200 * MS + k, false);
        }
        assert_eq!(t.time_of(start.count() + 1, t.read()), None, "overwritten");
    }

    #[test]
    fn an_idle_ticker_is_woken_once() {
        let t = Ticker::new(0);
        t.set_thread(std::thread::current());
        t.advance(MS, true);
        let seen = t.read();
        assert!(seen.idle());
        t.wake(seen);
        assert!(!t.read().idle());
        // A second poll with the same stale reading finds nothing to do.
        t.wake(seen);
        assert_eq!(t.read().count(), seen.count());
    }

    #[test]
    fn late_wake_ups_count_as_stalls_past_the_slack_and_an_overdue_tick_counts_now() {
        let t = Ticker::new(0);
        let slow = Duration::from_millis(1);
        let mut pace = Pace::new();
        // Coarse: a 4 ms period.
        let (period, _) = pace.next(&t, Seen { activity: true }, 0, slow);
        assert_eq!(t.period_ns(), period.as_nanos() as u64);
        t.woke_late(STALL_SLACK / 2);
        assert_eq!(t.stalled_ns(), 0, "within the slack");
        let before = t.stalled_ns();
        t.woke_late(STALL_SLACK + Duration::from_millis(30));
        t.advance(40 * MS, false);
        assert_eq!(t.stalled_since(before, 40 * MS), 30 * MS);
        // Awake for 50 ms, doing a tick's work: no stall.
        assert_eq!(t.stalled_since(before, 90 * MS), 30 * MS);
        // Asleep from 40 ms, no tick for 50 ms: 50 ms less a period and
        // the slack are a stall going on now.
        t.sleeps_from(40 * MS);
        let now = 90 * MS;
        let ongoing = now - 40 * MS - t.period_ns() - STALL_SLACK.as_nanos() as u64;
        assert_eq!(t.stalled_since(before, now), 30 * MS + ongoing);
    }

    #[test]
    fn the_pace_is_coarse_for_short_polls_fine_for_long_ones_and_backs_off_when_idle() {
        let t = Ticker::new(0);
        let slow = Duration::from_millis(1);
        let mut pace = Pace::new();
        let busy = Seen { activity: true };
        assert_eq!(pace.next(&t, busy, 0, slow), (slow * 4, false));
        t.want_fine();
        assert_eq!(pace.next(&t, busy, MS, slow), (slow / 4, false));
        assert_eq!(pace.next(&t, busy, 2 * MS, slow), (slow / 4, false));
        assert_eq!(pace.next(&t, busy, 300 * MS, slow), (slow * 4, false));
        let mut periods = Vec::new();
        for i in 0..20 {
            periods.push(pace.next(&t, Seen::default(), (600 + i) * MS, slow));
        }
        assert!(periods[..7].iter().all(|&(_, idle)| !idle));
        assert_eq!(periods[7], (slow * 8, true));
        assert_eq!(periods[19], (IDLE_PERIOD, true));
    }
}
