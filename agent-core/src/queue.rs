//! The local task queue: bounded in tasks and in payload bytes (large
//! payloads would exhaust memory long before the task count), ordered by
//! priority, then short work ahead of ordinary work ([`TaskQueue::push_ahead`]:
//! a split offload's head), then deadline, then arrival. Pure data
//! structure; the manager wraps it in a lock.

use crate::task::Priority;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

struct Entry<T> {
    priority: Priority,
    /// Runs before the ordinary work of its priority.
    ahead: bool,
    deadline: Option<Instant>,
    seq: u64,
    expected: Duration,
    bytes: usize,
    item: T,
}

impl<T> Entry<T> {
    /// Larger keys pop first: higher priority, then work pushed ahead,
    /// then a deadline before none and an earlier one before a later one,
    /// then arrival order.
    fn key(&self) -> (Priority, bool, Option<Reverse<Instant>>, Reverse<u64>) {
        (
            self.priority,
            self.ahead,
            self.deadline.map(Reverse),
            Reverse(self.seq),
        )
    }
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl<T> Eq for Entry<T> {}
impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Entry<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

/// Why [`TaskQueue::push`] refused an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueueFull {
    #[error("local queue full ({capacity} tasks)")]
    Tasks { capacity: usize },
    #[error("local queue full: {queued} bytes of {limit} queued, {item} more do not fit")]
    Bytes {
        queued: usize,
        limit: usize,
        item: usize,
    },
}

pub struct TaskQueue<T> {
    heap: BinaryHeap<Entry<T>>,
    capacity: usize,
    capacity_bytes: usize,
    bytes: usize,
    next_seq: u64,
}

impl<T> TaskQueue<T> {
    /// At most `capacity` items holding at most `capacity_bytes` together.
    pub fn new(capacity: usize, capacity_bytes: usize) -> Self {
        Self {
            heap: BinaryHeap::new(),
            capacity,
            capacity_bytes,
            bytes: 0,
            next_seq: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Payload bytes of the queued items.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn capacity_bytes(&self) -> usize {
        self.capacity_bytes
    }

    /// Whether an item of `bytes` would be accepted now.
    pub fn room_for(&self, bytes: usize) -> Result<(), QueueFull> {
        if self.heap.len() >= self.capacity {
            return Err(QueueFull::Tasks {
                capacity: self.capacity,
            });
        }
        if bytes > self.capacity_bytes.saturating_sub(self.bytes) {
            return Err(QueueFull::Bytes {
                queued: self.bytes,
                limit: self.capacity_bytes,
                item: bytes,
            });
        }
        Ok(())
    }

    /// Adds an item of `bytes` with its expected service time; gives it
    /// back, with the limit it hit, when full.
    pub fn push(
        &mut self,
        item: T,
        priority: Priority,
        deadline: Option<Instant>,
        expected: Duration,
        bytes: usize,
    ) -> Result<(), (T, QueueFull)> {
        self.push_entry(item, priority, false, deadline, expected, bytes)
    }

    /// [`TaskQueue::push`] for short work that runs before the ordinary
    /// work of its priority: a split's head, a few ms that unblock an
    /// offload, would otherwise wait behind whole local runs, and the split
    /// would pay the very queue it is meant to relieve.
    pub fn push_ahead(
        &mut self,
        item: T,
        priority: Priority,
        deadline: Option<Instant>,
        expected: Duration,
        bytes: usize,
    ) -> Result<(), (T, QueueFull)> {
        self.push_entry(item, priority, true, deadline, expected, bytes)
    }

    fn push_entry(
        &mut self,
        item: T,
        priority: Priority,
        ahead: bool,
        deadline: Option<Instant>,
        expected: Duration,
        bytes: usize,
    ) -> Result<(), (T, QueueFull)> {
        if let Err(full) = self.room_for(bytes) {
            return Err((item, full));
        }
        self.heap.push(Entry {
            priority,
            ahead,
            deadline,
            seq: self.next_seq,
            expected,
            bytes,
            item,
        });
        self.bytes += bytes;
        self.next_seq += 1;
        Ok(())
    }

    pub fn pop(&mut self) -> Option<(T, Duration)> {
        let e = self.heap.pop()?;
        self.bytes -= e.bytes;
        Some((e.item, e.expected))
    }

    /// Pops the first item (in queue order) that `matches`: the next task
    /// of a batch being formed. Linear in the queue's length.
    pub fn pop_matching(&mut self, matches: impl Fn(&T) -> bool) -> Option<(T, Duration)> {
        let mut items = std::mem::take(&mut self.heap).into_vec();
        let best = items
            .iter()
            .enumerate()
            .filter(|(_, e)| matches(&e.item))
            .max_by(|(_, a), (_, b)| a.cmp(b))
            .map(|(i, _)| i);
        let taken = best.map(|i| items.swap_remove(i));
        self.heap = BinaryHeap::from(items);
        let e = taken?;
        self.bytes -= e.bytes;
        Some((e.item, e.expected))
    }

    /// Multiplies the expected service time of the items that `matches`
    /// by `factor` (their model's estimate moved since they were queued).
    /// Linear in the queue's length; the order does not change.
    pub fn rescale(&mut self, matches: impl Fn(&T) -> bool, factor: f64) {
        if !factor.is_finite() || factor <= 0.0 || factor == 1.0 {
            return;
        }
        let mut items = std::mem::take(&mut self.heap).into_vec();
        for e in items.iter_mut().filter(|e| matches(&e.item)) {
            e.expected = e.expected.mul_f64(factor);
        }
        self.heap = BinaryHeap::from(items);
    }

    /// Removes every item that `matches` (linear in the queue's length),
    /// in no particular order. The heap is rebuilt only when one does: the
    /// manager asks at every arrival, and mostly none does.
    pub fn take_matching(&mut self, matches: impl Fn(&T) -> bool) -> Vec<T> {
        self.take_entries(|e| matches(&e.item))
    }

    /// Removes every item whose deadline is at or before `now`: it can
    /// only fail, and queued it would count in every estimate of the wait.
    pub fn take_expired(&mut self, now: Instant) -> Vec<T> {
        self.take_entries(|e| e.deadline.is_some_and(|d| d <= now))
    }

    /// The earliest deadline among the queued items.
    pub fn earliest_deadline(&self) -> Option<Instant> {
        self.heap.iter().filter_map(|e| e.deadline).min()
    }

    fn take_entries(&mut self, matches: impl Fn(&Entry<T>) -> bool) -> Vec<T> {
        if !self.heap.iter().any(&matches) {
            return Vec::new();
        }
        let (taken, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.heap)
            .into_vec()
            .into_iter()
            .partition(|e| matches(e));
        self.heap = BinaryHeap::from(kept);
        self.bytes -= taken.iter().map(|e| e.bytes).sum::<usize>();
        taken.into_iter().map(|e| e.item).collect()
    }

    /// How many queued items `match`.
    pub fn count_matching(&self, matches: impl Fn(&T) -> bool) -> usize {
        self.heap.iter().filter(|e| matches(&e.item)).count()
    }

    /// Removes every item (used when shutting down without draining).
    pub fn drain(&mut self) -> Vec<T> {
        self.bytes = 0;
        self.heap.drain().map(|e| e.item).collect()
    }

    /// Expected wait before a new task of `priority` would start at `now`:
    /// the work queued ahead of it (equal or higher priority) is handed, in
    /// order, to whichever of `workers` frees up first; `busy` holds the
    /// time left of each task in flight.
    pub fn wait_estimate(
        &self,
        priority: Priority,
        now: Instant,
        busy: &[Duration],
        workers: usize,
    ) -> Duration {
        self.wait_estimate_for(priority, false, now, busy, workers)
    }

    /// [`TaskQueue::wait_estimate`] for work pushed with
    /// [`TaskQueue::push_ahead`] when `ahead`: only higher priorities and
    /// work pushed ahead of the same priority come first.
    pub fn wait_estimate_for(
        &self,
        priority: Priority,
        ahead: bool,
        now: Instant,
        busy: &[Duration],
        workers: usize,
    ) -> Duration {
        self.wait_behind(
            |e| (e.priority, e.ahead) >= (priority, ahead),
            now,
            busy,
            workers,
        )
    }

    /// Expected wait before the queued item `id` starts: only the work
    /// ahead of it in queue order counts, not itself nor what queued
    /// behind it (which [`TaskQueue::wait_estimate`], the wait of a new
    /// arrival, would count). `None` when `id` is no longer queued.
    pub fn wait_ahead_of(
        &self,
        id: QueueId,
        now: Instant,
        busy: &[Duration],
        workers: usize,
    ) -> Option<Duration> {
        let item = self.heap.iter().find(|e| e.seq == id.0)?;
        Some(self.wait_behind(|e| e > item, now, busy, workers))
    }

    /// The wait before a start behind the entries `ahead` picks, handed in
    /// queue order to whichever of `workers` frees up first. An entry whose
    /// deadline passes before its turn holds no worker: it ends unrun.
    fn wait_behind(
        &self,
        ahead: impl Fn(&Entry<T>) -> bool,
        now: Instant,
        busy: &[Duration],
        workers: usize,
    ) -> Duration {
        let mut free: Vec<Duration> = busy.to_vec();
        free.resize(workers.max(busy.len()).max(1), Duration::ZERO);
        let mut before: Vec<&Entry<T>> = self.heap.iter().filter(|e| ahead(e)).collect();
        before.sort_by(|a, b| b.cmp(a));
        for e in before {
            let next = free.iter_mut().min().expect("at least one worker");
            if e.deadline.is_some_and(|d| d <= now + *next) {
                continue;
            }
            *next += e.expected;
        }
        free.into_iter().min().unwrap_or_default()
    }
}

/// A queued item, for [`TaskQueue::remove`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QueueId(u64);

impl<T> TaskQueue<T> {
    /// The items that would end after their deadline if the queue ran in
    /// order on `workers` workers, each free once its run in flight ends
    /// (`busy`: the time those runs have left), with how late each would
    /// be. A late item is taken to leave the queue (moved elsewhere, or
    /// expired unrun), so the items behind it move up.
    pub fn late(
        &self,
        now: Instant,
        busy: &[Duration],
        workers: usize,
    ) -> Vec<(QueueId, &T, Duration)> {
        if !self.heap.iter().any(|e| e.deadline.is_some()) {
            return Vec::new();
        }
        let mut free: Vec<Duration> = busy.to_vec();
        free.resize(workers.max(busy.len()).max(1), Duration::ZERO);
        let mut order: Vec<&Entry<T>> = self.heap.iter().collect();
        order.sort_by(|a, b| b.cmp(a));
        let mut late = Vec::new();
        for e in order {
            let next = free.iter_mut().min().expect("at least one worker");
            let end = now + *next + e.expected;
            match e.deadline {
                Some(d) if end > d => late.push((QueueId(e.seq), &e.item, end - d)),
                _ => *next += e.expected,
            }
        }
        late
    }

    /// Takes out the item `id`, if it is still queued. Linear in the
    /// queue's length.
    pub fn remove(&mut self, id: QueueId) -> Option<T> {
        let mut items = std::mem::take(&mut self.heap).into_vec();
        let taken = items
            .iter()
            .position(|e| e.seq == id.0)
            .map(|i| items.swap_remove(i));
        self.heap = BinaryHeap::from(items);
        let e = taken?;
        self.bytes -= e.bytes;
        Some(e.item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn pop_matching_takes_the_first_match_in_queue_order() {
        let mut q = TaskQueue::new(10, usize::MAX);
        q.push(("a", 1), Priority::Low, None, ms(1), 10).unwrap();
        q.push(("b", 2), Priority::Medium, None, ms(2), 20).unwrap();
        q.push(("c", 1), Priority::High, None, ms(3), 30).unwrap();
        q.push(("d", 1), Priority::Medium, None, ms(4), 40).unwrap();
        assert_eq!(q.count_matching(|i| i.1 == 1), 3);
        assert_eq!(q.pop_matching(|i| i.1 == 1), Some((("c", 1), ms(3))));
        assert_eq!(q.pop_matching(|i| i.1 == 1), Some((("d", 1), ms(4))));
        assert_eq!(q.bytes(), 30);
        assert_eq!(q.pop_matching(|i| i.1 == 3), None);
        assert_eq!(q.len(), 2);
        assert_eq!(q.pop().map(|(i, _)| i), Some(("b", 2)));
        assert_eq!(q.pop().map(|(i, _)| i), Some(("a", 1)));
    }

    #[test]
    fn work_pushed_ahead_runs_first_within_its_priority() {
        let t0 = Instant::now();
        let mut q = TaskQueue::new(10, usize::MAX);
        q.push("med-early", Priority::Medium, Some(t0 + ms(50)), ms(20), 0)
            .unwrap();
        q.push("med", Priority::Medium, None, ms(20), 0).unwrap();
        q.push_ahead("head-med", Priority::Medium, Some(t0 + ms(90)), ms(5), 0)
            .unwrap();
        q.push("high", Priority::High, None, ms(20), 0).unwrap();
        q.push_ahead("head-low", Priority::Low, None, ms(5), 0)
            .unwrap();
        // A head waits for higher priorities and the heads of its own, not
        // for the ordinary work of its priority: 3 ms in flight + 20 + 5.
        let busy = [ms(3)];
        assert_eq!(
            q.wait_estimate_for(Priority::Medium, true, t0, &busy, 1),
            ms(28)
        );
        // Ordinary work waits for all of it: 3 + 20 + 5 + 20 + 20.
        assert_eq!(q.wait_estimate(Priority::Medium, t0, &busy, 1), ms(68));
        assert_eq!(
            q.wait_estimate(Priority::Medium, t0, &busy, 1),
            q.wait_estimate_for(Priority::Medium, false, t0, &busy, 1)
        );
        let order: Vec<_> = std::iter::from_fn(|| q.pop().map(|(i, _)| i)).collect();
        assert_eq!(order, ["high", "head-med", "med-early", "med", "head-low"]);
    }

    #[test]
    fn pops_by_priority_then_deadline_then_fifo() {
        let t0 = Instant::now();
        let mut q = TaskQueue::new(10, usize::MAX);
        q.push("low", Priority::Low, None, ms(1), 0).unwrap();
        q.push("med-a", Priority::Medium, None, ms(1), 0).unwrap();
        q.push("med-late", Priority::Medium, Some(t0 + ms(50)), ms(1), 0)
            .unwrap();
        q.push("med-b", Priority::Medium, None, ms(1), 0).unwrap();
        q.push("med-early", Priority::Medium, Some(t0 + ms(10)), ms(1), 0)
            .unwrap();
        q.push("crit", Priority::Critical, None, ms(1), 0).unwrap();
        let order: Vec<_> = std::iter::from_fn(|| q.pop().map(|(i, _)| i)).collect();
        assert_eq!(
            order,
            ["crit", "med-early", "med-late", "med-a", "med-b", "low"]
        );
    }

    #[test]
    fn full_queue_gives_the_item_back() {
        let mut q = TaskQueue::new(2, usize::MAX);
        q.push(1, Priority::Low, None, ms(1), 0).unwrap();
        q.push(2, Priority::Low, None, ms(1), 0).unwrap();
        assert_eq!(
            q.push(3, Priority::Critical, None, ms(1), 0),
            Err((3, QueueFull::Tasks { capacity: 2 }))
        );
        assert_eq!(q.len(), 2);
    }

    /// A step: push (id, bytes) or pop, and what the queue must answer.
    enum Op {
        Push(u32, usize, Result<(), QueueFull>),
        Pop(Option<u32>),
        Drain(usize),
    }

    #[test]
    fn count_and_byte_limits_refuse_and_bytes_come_back_on_removal() {
        use Op::*;
        let tasks = |capacity| Err(QueueFull::Tasks { capacity });
        let bytes = |queued, limit, item| {
            Err(QueueFull::Bytes {
                queued,
                limit,
                item,
            })
        };
        // (name, count capacity, byte capacity, steps with the bytes held
        // after each)
        type Case = (&'static str, usize, usize, Vec<(Op, usize)>);
        let cases: Vec<Case> = vec![
            (
                "count limit first",
                2,
                1000,
                vec![
                    (Push(1, 10, Ok(())), 10),
                    (Push(2, 10, Ok(())), 20),
                    (Push(3, 10, tasks(2)), 20),
                    (Pop(Some(1)), 10),
                    (Push(3, 10, Ok(())), 20),
                ],
            ),
            (
                "byte limit first",
                10,
                100,
                vec![
                    (Push(1, 60, Ok(())), 60),
                    (Push(2, 40, Ok(())), 100),
                    (Push(3, 1, bytes(100, 100, 1)), 100),
                    (Push(4, 0, Ok(())), 100),
                    (Pop(Some(1)), 40),
                    (Push(3, 61, bytes(40, 100, 61)), 40),
                    (Push(3, 60, Ok(())), 100),
                ],
            ),
            (
                "an item larger than the budget never fits",
                10,
                100,
                vec![(Push(1, 101, bytes(0, 100, 101)), 0), (Pop(None), 0)],
            ),
            (
                "drain releases everything",
                10,
                100,
                vec![
                    (Push(1, 50, Ok(())), 50),
                    (Push(2, 50, Ok(())), 100),
                    (Drain(2), 0),
                    (Push(3, 100, Ok(())), 100),
                ],
            ),
        ];
        for (name, cap, cap_bytes, steps) in cases {
            let mut q = TaskQueue::new(cap, cap_bytes);
            for (i, (op, held)) in steps.into_iter().enumerate() {
                match op {
                    Push(id, b, want) => {
                        let got = q.push(id, Priority::Medium, None, ms(1), b);
                        assert_eq!(got.map_err(|(_, e)| e), want, "{name} step {i}");
                    }
                    Pop(want) => assert_eq!(q.pop().map(|(id, _)| id), want, "{name} step {i}"),
                    Drain(n) => assert_eq!(q.drain().len(), n, "{name} step {i}"),
                }
                assert_eq!(q.bytes(), held, "{name} step {i}");
            }
        }
    }

    #[test]
    fn refusals_name_the_limit_that_was_hit() {
        assert_eq!(
            QueueFull::Tasks { capacity: 512 }.to_string(),
            "local queue full (512 tasks)"
        );
        let full = QueueFull::Bytes {
            queued: 900,
            limit: 1000,
            item: 200,
        };
        assert!(full
            .to_string()
            .starts_with("local queue full: 900 bytes of 1000 queued"));
    }

    #[test]
    fn wait_estimate_counts_work_ahead() {
        let mut q = TaskQueue::new(10, usize::MAX);
        assert_eq!(
            q.wait_estimate(Priority::Medium, Instant::now(), &[], 1),
            Duration::ZERO
        );
        q.push(1, Priority::Low, None, ms(10), 0).unwrap();
        q.push(2, Priority::Medium, None, ms(4), 0).unwrap();
        q.push(3, Priority::High, None, ms(6), 0).unwrap();
        // A medium task waits behind medium and high work plus the in-flight task.
        assert_eq!(
            q.wait_estimate(Priority::Medium, Instant::now(), &[ms(2)], 1),
            ms(12)
        );
        // Two workers: one busy for 2 ms. High (6) goes to the idle one,
        // medium (4) to the other at 2 ms -> free at 6 and 6.
        assert_eq!(
            q.wait_estimate(Priority::Medium, Instant::now(), &[ms(2)], 2),
            ms(6)
        );
        assert_eq!(
            q.wait_estimate(Priority::Critical, Instant::now(), &[], 1),
            Duration::ZERO
        );
        assert_eq!(
            q.wait_estimate(Priority::Low, Instant::now(), &[], 1),
            ms(20)
        );
        // An idle second worker means no wait at all for an empty queue.
        let empty: TaskQueue<u8> = TaskQueue::new(1, usize::MAX);
        assert_eq!(
            empty.wait_estimate(Priority::Low, Instant::now(), &[ms(9)], 2),
            Duration::ZERO
        );
    }

    #[test]
    fn a_queued_item_waits_only_for_the_work_ahead_of_it() {
        let t0 = Instant::now();
        let mut q = TaskQueue::new(10, usize::MAX);
        // seq 0..=4, in this order of arrival.
        q.push("low", Priority::Low, None, ms(10), 0).unwrap();
        q.push("med-late", Priority::Medium, Some(t0 + ms(80)), ms(5), 0)
            .unwrap();
        q.push("med-none", Priority::Medium, None, ms(3), 0)
            .unwrap();
        q.push("med-early", Priority::Medium, Some(t0 + ms(50)), ms(4), 0)
            .unwrap();
        q.push("high", Priority::High, None, ms(6), 0).unwrap();
        let busy = [ms(2)];
        let ahead_of = |seq| {
            q.wait_ahead_of(QueueId(seq), Instant::now(), &busy, 1)
                .unwrap()
        };
        // Queue order: high, med-early, med-late, med-none, low.
        assert_eq!(ahead_of(4), ms(2));
        assert_eq!(ahead_of(3), ms(8));
        assert_eq!(ahead_of(1), ms(12));
        assert_eq!(ahead_of(2), ms(17));
        assert_eq!(ahead_of(0), ms(20));
        // A new medium arrival waits behind every medium item; the queued
        // med-early does not wait behind itself or the two behind it.
        assert_eq!(
            q.wait_estimate(Priority::Medium, Instant::now(), &busy, 1),
            ms(20)
        );
        // Two workers: high goes to the idle one (free at 6), med-early
        // to the one free at 2 (free at 6): med-late starts at 6.
        assert_eq!(
            q.wait_ahead_of(QueueId(1), Instant::now(), &busy, 2),
            Some(ms(6))
        );
        // An item no longer queued has no wait.
        q.remove(QueueId(3)).unwrap();
        assert_eq!(q.wait_ahead_of(QueueId(3), Instant::now(), &busy, 1), None);
        assert_eq!(
            q.wait_ahead_of(QueueId(1), Instant::now(), &busy, 1),
            Some(ms(8))
        );
    }

    #[test]
    fn rescaling_moves_the_estimates_of_the_items_picked_only() {
        let mut q = TaskQueue::new(10, usize::MAX);
        q.push("image", Priority::Medium, None, ms(6), 1).unwrap();
        q.push("text", Priority::Medium, None, ms(1), 1).unwrap();
        q.push("image", Priority::High, None, ms(6), 1).unwrap();
        assert_eq!(
            q.wait_estimate(Priority::Low, Instant::now(), &[], 1),
            ms(13)
        );
        q.rescale(|i| *i == "image", 2.5);
        assert_eq!(
            q.wait_estimate(Priority::Low, Instant::now(), &[], 1),
            ms(31)
        );
        // Nonsense factors change nothing.
        for f in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            q.rescale(|_| true, f);
        }
        assert_eq!(
            q.wait_estimate(Priority::Low, Instant::now(), &[], 1),
            ms(31)
        );
        let order: Vec<_> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(
            order,
            [("image", ms(15)), ("image", ms(15)), ("text", ms(1))]
        );
    }

    #[test]
    fn late_items_are_found_in_queue_order_and_removed() {
        let t0 = Instant::now();
        let mut q = TaskQueue::new(10, usize::MAX);
        // One worker, 10 ms left of its run. Queue order: high (20 ms),
        // then the mediums by deadline: a (deadline 50 ms, 20 ms of work),
        // b (40 ms, 20), then c (no deadline, 20), d (low, deadline 200, 20).
        q.push("a", Priority::Medium, Some(t0 + ms(50)), ms(20), 1)
            .unwrap();
        q.push("c", Priority::Medium, None, ms(20), 1).unwrap();
        q.push("high", Priority::High, Some(t0 + ms(100)), ms(20), 1)
            .unwrap();
        q.push("b", Priority::Medium, Some(t0 + ms(40)), ms(20), 1)
            .unwrap();
        q.push("d", Priority::Low, Some(t0 + ms(200)), ms(20), 1)
            .unwrap();
        let busy = [ms(10)];
        // high ends at 30; b would end at 50 (late by 10) and leaves; a then
        // ends at 50 (in time); c at 70; d at 90.
        let late: Vec<_> = q
            .late(t0, &busy, 1)
            .into_iter()
            .map(|(id, item, by)| (id, *item, by))
            .collect();
        assert_eq!(late.len(), 1);
        assert_eq!((late[0].1, late[0].2), ("b", ms(10)));
        // Two workers, both free: nothing is late.
        assert!(q.late(t0, &[], 2).is_empty());
        // 30 ms later, with the same work left: high ends at 60, b and a
        // are late (40 and 50 are past), c ends at 80, d at 100.
        let later: Vec<_> = q
            .late(t0 + ms(30), &busy, 1)
            .into_iter()
            .map(|(_, item, _)| *item)
            .collect();
        assert_eq!(later, ["b", "a"]);
        // Removing takes the item and its bytes out, once.
        let id = late[0].0;
        assert_eq!(q.remove(id), Some("b"));
        assert_eq!(q.remove(id), None);
        assert_eq!((q.len(), q.bytes()), (4, 4));
        let order: Vec<_> = std::iter::from_fn(|| q.pop().map(|(i, _)| i)).collect();
        assert_eq!(order, ["high", "a", "c", "d"]);
        // Without deadlines nothing is ever late.
        let mut q = TaskQueue::new(10, usize::MAX);
        q.push("x", Priority::Medium, None, ms(500), 1).unwrap();
        assert!(q.late(t0, &[ms(500)], 1).is_empty());
    }

    #[test]
    fn items_nobody_waits_for_leave_the_queue_and_its_estimates() {
        let mut q: TaskQueue<(u32, bool)> = TaskQueue::new(10, 1000);
        // (id, nobody waits for it any more)
        let items = [(1, false), (2, true), (3, false), (4, true)];
        for item in items {
            q.push(item, Priority::Medium, None, Duration::from_millis(10), 100)
                .unwrap();
        }
        assert_eq!(
            q.wait_estimate(Priority::Medium, Instant::now(), &[], 1),
            Duration::from_millis(40)
        );
        let mut gone: Vec<u32> = q
            .take_matching(|(_, dead)| *dead)
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        gone.sort();
        assert_eq!(gone, [2, 4]);
        assert_eq!((q.len(), q.bytes()), (2, 200));
        assert_eq!(
            q.wait_estimate(Priority::Medium, Instant::now(), &[], 1),
            Duration::from_millis(20)
        );
        // The rest keeps its order.
        assert_eq!(q.pop().map(|(item, _)| item.0), Some(1));
        assert_eq!(q.pop().map(|(item, _)| item.0), Some(3));
        assert!(q.take_matching(|_| true).is_empty());
    }

    #[test]
    fn items_whose_deadline_passes_before_their_turn_hold_no_worker() {
        let t0 = Instant::now();
        let mut q = TaskQueue::new(10, usize::MAX);
        q.push("high", Priority::High, None, ms(30), 0).unwrap();
        // Its turn comes at 30 ms, after its deadline: it will end unrun.
        q.push("doomed", Priority::Medium, Some(t0 + ms(20)), ms(10), 0)
            .unwrap();
        q.push("in-time", Priority::Medium, Some(t0 + ms(35)), ms(10), 0)
            .unwrap();
        q.push("none", Priority::Medium, None, ms(10), 0).unwrap();
        // 30 (high) + 10 (in-time) + 10 (none); "doomed" adds nothing.
        assert_eq!(q.wait_estimate(Priority::Medium, t0, &[], 1), ms(50));
        let none = q.wait_ahead_of(QueueId(3), t0, &[], 1);
        assert_eq!(none, Some(ms(40)));
        // Later, "in-time" too starts past its deadline.
        assert_eq!(
            q.wait_estimate(Priority::Medium, t0 + ms(6), &[], 1),
            ms(40)
        );
        // With the high work gone, "doomed" starts in time again.
        let _ = q.take_matching(|i| *i == "high");
        assert_eq!(q.wait_estimate(Priority::Medium, t0, &[], 1), ms(30));
        assert_eq!(q.earliest_deadline(), Some(t0 + ms(20)));
        // At its deadline an item leaves; the others stay, in order.
        assert!(q.take_expired(t0 + ms(19)).is_empty());
        assert_eq!(q.take_expired(t0 + ms(20)), ["doomed"]);
        assert_eq!(q.earliest_deadline(), Some(t0 + ms(35)));
        assert_eq!(q.take_expired(t0 + ms(60)), ["in-time"]);
        assert_eq!(q.earliest_deadline(), None);
        assert_eq!(q.pop().map(|(i, _)| i), Some("none"));
    }
}
