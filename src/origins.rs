//! Origin memory: how tasks from the same origin behaved, so that new
//! tasks from an origin that hogs start where its tasks ended up.
//!
//! Nothing can preempt a poll that is already running. A request handler
//! that computes 20 ms in one poll has done its damage before any judgement
//! of that request: the only protection is to run such requests off the
//! main workers from their first poll, and for that the service has to
//! remember. An origin is where tasks come from: the spawn site
//! (`#[track_caller]` location) of an unnamed task, the name of a named one
//! (for a request under `PulseLayer`, its route).
//!
//! An origin is judged like a task whose windows are its tasks. Each task
//! that misbehaves (its first bad window, a stuck poll) is an offence: the
//! origin's *starting tier* goes up one tier, or straight to the tier the
//! task itself reached if that is higher. Each task that ends without ever
//! misbehaving is a clean task; `clean_tasks` of them in a row move the
//! origin down one tier (the hysteresis). New tasks start at their origin's
//! tier (capped by what the task can reach: a future that cannot move stops
//! at `Yield`), and are judged from there as usual.
//!
//! Only origins that have offended are remembered: a well-behaved origin
//! has no record, costs nothing, and its tasks start at `Monitor`. Records
//! live in a sharded map of bounded size (`capacity`); when a shard is full,
//! a new offender replaces the record at the lowest tier that was used
//! least recently, so names of unbounded cardinality
//! (raw URIs, ids) cannot grow it past the bound. Looked up once per task
//! at its start and once at its end, and only while any record exists;
//! never per poll.

use std::borrow::Cow;
use std::fmt;
use std::hash::Hasher;
use std::panic::Location;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::sharded::{KeyHasher, KeyMap, ShardedMap};
use crate::sync::lock;
use crate::tier::{Tier, TierChange};

/// Where a task comes from: what tokio-pulse remembers its behaviour by.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Origin {
    /// The call site of an unnamed [`Pulse::spawn`](crate::Pulse::spawn)
    /// or [`PulseExt::pulse`](crate::PulseExt::pulse).
    Site(&'static Location<'static>),
    /// The name of a named task or request (`spawn_named`, `pulse_named`,
    /// the route `PulseLayer` names a request by).
    Name(Cow<'static, str>),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Site(location) => write!(f, "{location}"),
            Origin::Name(name) => f.write_str(name),
        }
    }
}

/// A borrowed [`Origin`], as a task knows it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum OriginRef<'a> {
    Site(&'static Location<'static>),
    Name(&'a str),
}

impl OriginRef<'_> {
    /// The key of the origin's record. Sites are keyed by file, line and
    /// column rather than by address: one call site can have several
    /// `Location`s (one per monomorphised copy of a generic caller).
    fn key(&self) -> u64 {
        let mut h = KeyHasher::default();
        match self {
            OriginRef::Site(l) => {
                h.write_u64(1);
                h.write(l.file().as_bytes());
                h.write_u64(u64::from(l.line()) << 32 | u64::from(l.column()));
            }
            OriginRef::Name(name) => {
                h.write_u64(2);
                h.write(name.as_bytes());
            }
        }
        h.finish()
    }

    fn to_owned(self) -> Origin {
        match self {
            OriginRef::Site(l) => Origin::Site(l),
            OriginRef::Name(n) => Origin::Name(Cow::Owned(n.to_owned())),
        }
    }
}

/// One remembered origin, from [`Snapshot::origins`](crate::Snapshot::origins).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct OriginSnapshot {
    /// The origin.
    pub origin: Origin,
    /// The tier its new tasks start at.
    pub starting_tier: Tier,
    /// Tasks started from it since it was first remembered: the task
    /// whose offence made it remembered, and every task since that started
    /// above `Monitor` (tasks it starts at `Monitor` are not counted, so
    /// that spawning them writes nothing shared).
    pub tasks_seen: u64,
    /// Tasks of it that misbehaved (each counted once).
    pub offenders: u64,
}

/// How origins are remembered: validated settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OriginSettings {
    /// Most origins remembered at once.
    pub capacity: usize,
    /// Clean tasks in a row that move an origin down one tier.
    pub clean_tasks: u32,
}

/// A task's start, as its origin decides it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Start {
    pub tier: Tier,
}

/// An origin's starting tier changed.
#[derive(Clone, Debug)]
pub(crate) struct OriginChange {
    pub origin: Origin,
    pub change: TierChange,
    pub offenders: u64,
}

#[derive(Debug)]
struct Record {
    origin: Origin,
    tier: AtomicU8,
    clean_streak: AtomicU32,
    tasks_seen: AtomicU64,
    offenders: AtomicU64,
    /// The memory's use counter at the record's last offence: with the
    /// tier, what eviction orders by.
    used: AtomicU64,
}

impl Record {
    fn tier(&self) -> Tier {
        Tier::from_u8(self.tier.load(Relaxed))
    }

    fn snapshot(&self) -> OriginSnapshot {
        OriginSnapshot {
            origin: self.origin.clone(),
            starting_tier: self.tier(),
            tasks_seen: self.tasks_seen.load(Relaxed),
            offenders: self.offenders.load(Relaxed),
        }
    }
}

/// The remembered origins of one `Pulse`.
///
/// Every spawn and task end looks its origin up once any origin is held:
/// from `index`, a copy of all records that is replaced whole whenever a
/// record is added or evicted (on an offence, rare), so that looking up
/// takes no lock and writes nothing shared. Nor does what follows for an
/// origin at `Monitor`, the tier of nearly every task's origin: counting
/// a task in, or a clean end toward a demotion, is only done for origins
/// above it.
#[derive(Debug)]
pub(crate) struct OriginMemory {
    records: ShardedMap<Arc<Record>>,
    index: ArcSwap<KeyMap<Arc<Record>>>,
    /// Held while a change to `records` is copied into `index`.
    indexing: Mutex<()>,
    /// Records held: 0 lets a task's start and end skip the lookup.
    held: AtomicUsize,
    per_shard: usize,
    clean_tasks: AtomicU32,
    /// A logical clock for eviction order, advanced at each offence.
    uses: AtomicU64,
}

impl OriginMemory {
    pub(crate) fn new(settings: OriginSettings) -> Self {
        OriginMemory {
            records: ShardedMap::default(),
            index: ArcSwap::default(),
            indexing: Mutex::new(()),
            held: AtomicUsize::new(0),
            per_shard: settings.capacity.div_ceil(ShardedMap::<()>::SHARDS).max(1),
            clean_tasks: AtomicU32::new(settings.clean_tasks),
            uses: AtomicU64::new(1),
        }
    }

    pub(crate) fn set_clean_tasks(&self, clean_tasks: u32) {
        self.clean_tasks.store(clean_tasks, Relaxed);
    }

    /// The tier a new task from `origin` starts at.
    #[inline]
    pub(crate) fn start(&self, origin: OriginRef<'_>) -> Start {
        if self.held.load(Relaxed) == 0 {
            return Start {
                tier: Tier::Monitor,
            };
        }
        self.start_remembered(origin)
    }

    #[cold]
    fn start_remembered(&self, origin: OriginRef<'_>) -> Start {
        let index = self.index.load();
        let tier = index.get(&origin.key()).map_or(Tier::Monitor, |r| {
            let tier = r.tier();
            if tier > Tier::Monitor {
                r.tasks_seen.fetch_add(1, Relaxed);
            }
            tier
        });
        Start { tier }
    }

    /// A task from `origin` misbehaved and now stands at `reached`; `first`
    /// when it is the task's first offence. Returns the origin's change of
    /// starting tier, if any.
    #[cold]
    pub(crate) fn offended(
        &self,
        origin: OriginRef<'_>,
        reached: Tier,
        first: bool,
    ) -> Option<OriginChange> {
        let key = origin.key();
        let now = self.uses.fetch_add(1, Relaxed);
        let record = self.records.with_shard(key, |shard| {
            if let Some(r) = shard.get(&key) {
                return Arc::clone(r);
            }
            if shard.len() >= self.per_shard {
                // Evict the calmest: the lowest tier, least recently used.
                let victim = shard
                    .iter()
                    .min_by_key(|(_, r)| (r.tier(), r.used.load(Relaxed)))
                    .map(|(k, _)| *k);
                if let Some(victim) = victim {
                    shard.remove(&victim);
                    self.held.fetch_sub(1, Relaxed);
                    self.reindex(|index| {
                        index.remove(&victim);
                    });
                }
            }
            let r = Arc::new(Record {
                origin: origin.to_owned(),
                tier: AtomicU8::new(Tier::Monitor as u8),
                clean_streak: AtomicU32::new(0),
                tasks_seen: AtomicU64::new(1),
                offenders: AtomicU64::new(0),
                used: AtomicU64::new(now),
            });
            shard.insert(key, Arc::clone(&r));
            self.reindex(|index| {
                index.insert(key, Arc::clone(&r));
            });
            self.held.fetch_add(1, Relaxed);
            r
        });
        record.used.store(now, Relaxed);
        record.clean_streak.store(0, Relaxed);
        if first {
            record.offenders.fetch_add(1, Relaxed);
        }
        let from = record.tier();
        let to = if first {
            Tier::from_u8(from as u8 + 1).max(reached)
        } else {
            from.max(reached)
        };
        if to <= from {
            return None;
        }
        // Racing offences settle on the highest tier either asked for.
        let prior = Tier::from_u8(record.tier.fetch_max(to as u8, Relaxed));
        (prior < to).then(|| OriginChange {
            origin: record.origin.clone(),
            change: TierChange { from: prior, to },
            offenders: record.offenders.load(Relaxed),
        })
    }

    /// A task from `origin` ended without ever misbehaving. Returns the
    /// origin's change of starting tier, if any.
    #[inline]
    pub(crate) fn behaved(&self, origin: OriginRef<'_>) -> Option<OriginChange> {
        if self.held.load(Relaxed) == 0 {
            return None;
        }
        self.behaved_remembered(origin)
    }

    #[cold]
    fn behaved_remembered(&self, origin: OriginRef<'_>) -> Option<OriginChange> {
        let index = self.index.load();
        let record = index.get(&origin.key())?;
        let from = record.tier();
        if from == Tier::Monitor {
            return None;
        }
        let streak = record.clean_streak.fetch_add(1, Relaxed) + 1;
        if streak < self.clean_tasks.load(Relaxed) {
            return None;
        }
        record.clean_streak.store(0, Relaxed);
        let to = Tier::from_u8(from as u8 - 1);
        // Lost to a racing offence or demotion: theirs stands.
        record
            .tier
            .compare_exchange(from as u8, to as u8, Relaxed, Relaxed)
            .ok()?;
        Some(OriginChange {
            origin: record.origin.clone(),
            change: TierChange { from, to },
            offenders: record.offenders.load(Relaxed),
        })
    }

    /// Applies `change` to a copy of the index and publishes the copy
    /// (called under the lock of the shard that changed).
    #[cold]
    fn reindex(&self, change: impl FnOnce(&mut KeyMap<Arc<Record>>)) {
        let _one_at_a_time = lock(&self.indexing);
        let mut index = KeyMap::clone(&self.index.load());
        change(&mut index);
        self.index.store(Arc::new(index));
    }

    /// Every remembered origin.
    pub(crate) fn snapshot(&self) -> Vec<OriginSnapshot> {
        let mut all = Vec::new();
        self.records.for_each(|r| all.push(r.snapshot()));
        all
    }

    /// Remembered origins per starting tier.
    #[cfg(feature = "metrics")]
    pub(crate) fn tier_counts(&self) -> crate::tier::PerTier<usize> {
        let mut tiers = Vec::new();
        self.records.for_each(|r| tiers.push(r.tier()));
        crate::tier::PerTier::tally(tiers)
    }

    /// Records held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory(capacity: usize, clean_tasks: u32) -> OriginMemory {
        OriginMemory::new(OriginSettings {
            capacity,
            clean_tasks,
        })
    }

    #[test]
    fn each_offending_task_raises_its_origin_one_tier_and_clean_tasks_lower_it() {
        let m = memory(64, 3);
        let route = OriginRef::Name("/heavy");
        assert_eq!(m.start(route).tier, Tier::Monitor);
        let mut tiers = Vec::new();
        for _ in 0..4 {
            m.offended(route, Tier::Warn, true);
            tiers.push(m.start(route).tier);
        }
        assert_eq!(
            tiers,
            [Tier::Warn, Tier::Yield, Tier::Isolate, Tier::Isolate]
        );
        // Another route is unaffected.
        assert_eq!(m.start(OriginRef::Name("/fast")).tier, Tier::Monitor);
        let mut steps = Vec::new();
        for _ in 0..9 {
            if let Some(c) = m.behaved(route) {
                steps.push(c.change.to);
            }
        }
        assert_eq!(steps, [Tier::Yield, Tier::Warn, Tier::Monitor]);
    }

    #[test]
    fn a_task_that_reached_isolate_takes_its_origin_there_at_once() {
        let m = memory(64, 3);
        let site = OriginRef::Site(Location::caller());
        let change = m.offended(site, Tier::Isolate, true).unwrap();
        assert_eq!(
            (change.change.from, change.change.to),
            (Tier::Monitor, Tier::Isolate)
        );
        assert_eq!(m.start(site).tier, Tier::Isolate);
        let s = &m.snapshot()[0];
        assert_eq!((s.offenders, s.tasks_seen), (1, 2));
    }

    #[test]
    fn well_behaved_origins_are_not_remembered() {
        let m = memory(64, 3);
        for i in 0..1_000 {
            let name = format!("/user/{i}");
            m.start(OriginRef::Name(&name));
            assert!(m.behaved(OriginRef::Name(&name)).is_none());
        }
        assert_eq!(m.len(), 0);
    }

    #[test]
    fn a_flood_of_distinct_offending_names_stays_within_capacity() {
        let m = memory(256, 3);
        // A hot offender is remembered throughout the flood.
        let hot = OriginRef::Name("/report");
        m.offended(hot, Tier::Isolate, true);
        for i in 0..20_000 {
            let name = format!("/user/{i}");
            m.offended(OriginRef::Name(&name), Tier::Warn, true);
            if i % 100 == 0 {
                m.offended(hot, Tier::Isolate, false);
            }
            assert!(
                m.len() <= 256 + ShardedMap::<()>::SHARDS,
                "{} records",
                m.len()
            );
        }
        assert_eq!(
            m.start(hot).tier,
            Tier::Isolate,
            "the hot offender was evicted"
        );
    }
}
