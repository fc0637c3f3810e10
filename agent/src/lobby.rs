//! The cloud's dynamic batcher. A request of a batching model waits in the
//! lobby while it waits for an inference slot. Whichever request of the
//! model gets a slot first leads: it takes up to `max_batch - 1` others of
//! the same model from the lobby (waiting at most the model's batch delay
//! for them when the batch is not full) and runs them all as one batch;
//! the others get their answers from it and never take a slot.
//!
//! A request that goes away while in the lobby (its future dropped) leaves
//! it through its ticket's guard, so no leader runs work nobody waits for.

use crate::infer::Inference;
use agent_core::{TaskError, TaskType};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{oneshot, Notify};

/// A batched answer and when its batch started.
pub type Answer = (Result<Inference, TaskError>, Instant);

struct Waiter {
    id: u64,
    payload: Vec<u8>,
    deadline: Option<Instant>,
    reply: oneshot::Sender<Answer>,
}

#[derive(Default)]
struct Rooms {
    next_id: u64,
    by_type: HashMap<TaskType, VecDeque<Waiter>>,
}

#[derive(Default)]
pub struct Lobby {
    rooms: Mutex<Rooms>,
    /// Wakes leaders waiting for their batch to fill.
    joined: Notify,
}

/// A request's place in the lobby; leaves it when dropped.
pub struct Ticket {
    lobby: Arc<Lobby>,
    task_type: TaskType,
    id: u64,
    pub answer: oneshot::Receiver<Answer>,
}

/// A request that took its own place back to lead a batch.
pub struct Leader {
    pub payload: Vec<u8>,
}

/// Another request of the batch: its payload and where its answer goes.
pub struct Follower {
    pub payload: Vec<u8>,
    pub deadline: Option<Instant>,
    reply: oneshot::Sender<Answer>,
}

impl Follower {
    pub fn answer(self, a: Answer) {
        // The follower may have gone away meanwhile: nobody to tell.
        let _ = self.reply.send(a);
    }
}

impl Lobby {
    pub fn join(
        self: &Arc<Self>,
        task_type: TaskType,
        payload: Vec<u8>,
        deadline: Option<Instant>,
    ) -> Ticket {
        let (tx, rx) = oneshot::channel();
        let mut rooms = self.lock();
        let id = rooms.next_id;
        rooms.next_id += 1;
        rooms
            .by_type
            .entry(task_type)
            .or_default()
            .push_back(Waiter {
                id,
                payload,
                deadline,
                reply: tx,
            });
        drop(rooms);
        self.joined.notify_waiters();
        Ticket {
            lobby: self.clone(),
            task_type,
            id,
            answer: rx,
        }
    }

    /// Requests of `task_type` waiting now.
    pub fn waiting(&self, task_type: TaskType) -> usize {
        self.lock().by_type.get(&task_type).map_or(0, VecDeque::len)
    }

    /// Takes up to `n` waiting requests of `task_type`, oldest first.
    pub fn take(&self, task_type: TaskType, n: usize) -> Vec<Follower> {
        let mut rooms = self.lock();
        let Some(room) = rooms.by_type.get_mut(&task_type) else {
            return Vec::new();
        };
        let n = n.min(room.len());
        room.drain(..n)
            .map(|w| Follower {
                payload: w.payload,
                deadline: w.deadline,
                reply: w.reply,
            })
            .collect()
    }

    /// Waits until at least `n` requests of `task_type` wait, or `until`.
    pub async fn wait_for(&self, task_type: TaskType, n: usize, until: Instant) {
        loop {
            let joined = self.joined.notified();
            if self.waiting(task_type) >= n || Instant::now() >= until {
                return;
            }
            tokio::select! {
                _ = joined => {}
                _ = tokio::time::sleep_until(until.into()) => return,
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Rooms> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Ticket {
    /// Takes this request's own place back to lead a batch; `None` when a
    /// leader already took it (its answer is on the way).
    pub fn lead(&mut self) -> Option<Leader> {
        let mut rooms = self.lobby.lock();
        let room = rooms.by_type.get_mut(&self.task_type)?;
        let i = room.iter().position(|w| w.id == self.id)?;
        let w = room.remove(i)?;
        Some(Leader { payload: w.payload })
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut rooms = self.lobby.lock();
        if let Some(room) = rooms.by_type.get_mut(&self.task_type) {
            room.retain(|w| w.id != self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_leader_takes_others_and_a_taken_ticket_cannot_lead() {
        let lobby = Arc::new(Lobby::default());
        let t = TaskType::ImageClassification;
        let mut a = lobby.join(t, vec![1], None);
        let mut b = lobby.join(t, vec![2], None);
        let c = lobby.join(TaskType::NlpAnalysis, vec![3], None);
        let lead = a.lead().expect("a leads");
        assert_eq!(lead.payload, vec![1]);
        let followers = lobby.take(t, 7);
        assert_eq!(followers.len(), 1, "only b, not the other model's c");
        assert!(b.lead().is_none(), "b was taken");
        for f in followers {
            assert_eq!(f.payload, vec![2]);
            f.answer((Err(TaskError::Internal("x".into())), Instant::now()));
        }
        assert!(b.answer.try_recv().is_ok());
        drop(c);
        assert_eq!(
            lobby.waiting(TaskType::NlpAnalysis),
            0,
            "a dropped ticket leaves"
        );
    }

    #[tokio::test]
    async fn wait_for_returns_when_enough_join_or_at_the_limit() {
        let lobby = Arc::new(Lobby::default());
        let t = TaskType::ObjectDetection;
        let t0 = Instant::now();
        lobby.wait_for(t, 1, t0 + Duration::from_millis(30)).await;
        assert!(t0.elapsed() >= Duration::from_millis(25));
        let l = lobby.clone();
        let joiner = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            l.join(t, vec![], None)
        });
        let t0 = Instant::now();
        lobby.wait_for(t, 1, t0 + Duration::from_secs(5)).await;
        assert!(t0.elapsed() < Duration::from_secs(1));
        drop(joiner.await.unwrap());
    }
}
