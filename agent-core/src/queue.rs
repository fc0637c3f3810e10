//! The local task queue: bounded, ordered by priority, then deadline, then
//! arrival. Pure data structure; the manager wraps it in a lock.

use crate::task::Priority;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

struct Entry<T> {
    priority: Priority,
    deadline: Option<Instant>,
    seq: u64,
    expected: Duration,
    item: T,
}

impl<T> Entry<T> {
    /// Larger keys pop first: higher priority, then a deadline before none
    /// and an earlier one before a later one, then arrival order.
    fn key(&self) -> (Priority, Option<Reverse<Instant>>, Reverse<u64>) {
        (self.priority, self.deadline.map(Reverse), Reverse(self.seq))
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

pub struct TaskQueue<T> {
    heap: BinaryHeap<Entry<T>>,
    capacity: usize,
    next_seq: u64,
}

impl<T> TaskQueue<T> {
    pub fn new(capacity: usize) -> Self {
        Self {
            heap: BinaryHeap::new(),
            capacity,
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

    /// Adds an item with its expected service time; gives it back when full.
    pub fn push(
        &mut self,
        item: T,
        priority: Priority,
        deadline: Option<Instant>,
        expected: Duration,
    ) -> Result<(), T> {
        if self.heap.len() >= self.capacity {
            return Err(item);
        }
        self.heap.push(Entry {
            priority,
            deadline,
            seq: self.next_seq,
            expected,
            item,
        });
        self.next_seq += 1;
        Ok(())
    }

    pub fn pop(&mut self) -> Option<(T, Duration)> {
        self.heap.pop().map(|e| (e.item, e.expected))
    }

    /// Removes every item (used when shutting down without draining).
    pub fn drain(&mut self) -> Vec<T> {
        self.heap.drain().map(|e| e.item).collect()
    }

    /// Expected wait before a new task of `priority` would start: the work
    /// queued ahead of it (equal or higher priority) is handed, in order, to
    /// whichever of `workers` frees up first; `busy` holds the time left of
    /// each task in flight.
    pub fn wait_estimate(&self, priority: Priority, busy: &[Duration], workers: usize) -> Duration {
        let mut free: Vec<Duration> = busy.to_vec();
        free.resize(workers.max(busy.len()).max(1), Duration::ZERO);
        let mut ahead: Vec<&Entry<T>> = self
            .heap
            .iter()
            .filter(|e| e.priority >= priority)
            .collect();
        ahead.sort_by(|a, b| b.cmp(a));
        for e in ahead {
            let next = free.iter_mut().min().expect("at least one worker");
            *next += e.expected;
        }
        free.into_iter().min().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn pops_by_priority_then_deadline_then_fifo() {
        let t0 = Instant::now();
        let mut q = TaskQueue::new(10);
        q.push("low", Priority::Low, None, ms(1)).unwrap();
        q.push("med-a", Priority::Medium, None, ms(1)).unwrap();
        q.push("med-late", Priority::Medium, Some(t0 + ms(50)), ms(1))
            .unwrap();
        q.push("med-b", Priority::Medium, None, ms(1)).unwrap();
        q.push("med-early", Priority::Medium, Some(t0 + ms(10)), ms(1))
            .unwrap();
        q.push("crit", Priority::Critical, None, ms(1)).unwrap();
        let order: Vec<_> = std::iter::from_fn(|| q.pop().map(|(i, _)| i)).collect();
        assert_eq!(
            order,
            ["crit", "med-early", "med-late", "med-a", "med-b", "low"]
        );
    }

    #[test]
    fn full_queue_gives_the_item_back() {
        let mut q = TaskQueue::new(2);
        q.push(1, Priority::Low, None, ms(1)).unwrap();
        q.push(2, Priority::Low, None, ms(1)).unwrap();
        assert_eq!(q.push(3, Priority::Critical, None, ms(1)), Err(3));
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn wait_estimate_counts_work_ahead() {
        let mut q = TaskQueue::new(10);
        assert_eq!(q.wait_estimate(Priority::Medium, &[], 1), Duration::ZERO);
        q.push(1, Priority::Low, None, ms(10)).unwrap();
        q.push(2, Priority::Medium, None, ms(4)).unwrap();
        q.push(3, Priority::High, None, ms(6)).unwrap();
        // A medium task waits behind medium and high work plus the in-flight task.
        assert_eq!(q.wait_estimate(Priority::Medium, &[ms(2)], 1), ms(12));
        // Two workers: one busy for 2 ms. High (6) goes to the idle one,
        // medium (4) to the other at 2 ms -> free at 6 and 6.
        assert_eq!(q.wait_estimate(Priority::Medium, &[ms(2)], 2), ms(6));
        assert_eq!(q.wait_estimate(Priority::Critical, &[], 1), Duration::ZERO);
        assert_eq!(q.wait_estimate(Priority::Low, &[], 1), ms(20));
        // An idle second worker means no wait at all for an empty queue.
        let empty: TaskQueue<u8> = TaskQueue::new(1);
        assert_eq!(
            empty.wait_estimate(Priority::Low, &[ms(9)], 2),
            Duration::ZERO
        );
    }
}
