//! The engines of one process, lent out one task at a time, and replaced
//! as a whole when new models are swapped in.
//!
//! A swap hands the pool a full set of engines that are already loaded and
//! warmed up; the idle engines are dropped at once and the ones in use are
//! dropped when their task finishes, so a task always runs on exactly one
//! generation of models and no task waits for a load.

use super::Engine;
use std::sync::{Arc, Condvar, Mutex};

/// Engines lent out one at a time; [`EnginePool::swap`] replaces them all.
pub struct EnginePool {
    state: Mutex<State>,
    returned: Condvar,
}

struct State {
    generation: u64,
    idle: Vec<Box<dyn Engine>>,
    closed: bool,
}

impl EnginePool {
    pub fn new(engines: Vec<Box<dyn Engine>>) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                generation: 0,
                idle: engines,
                closed: false,
            }),
            returned: Condvar::new(),
        })
    }

    /// Lends an idle engine, waiting for one to come back if all are in use;
    /// `None` once the pool is closed.
    pub fn checkout(self: &Arc<Self>) -> Option<PooledEngine> {
        let mut state = self.lock();
        loop {
            if state.closed {
                return None;
            }
            if let Some(engine) = state.idle.pop() {
                return Some(PooledEngine {
                    engine: Some(engine),
                    generation: state.generation,
                    pool: self.clone(),
                });
            }
            state = self.returned.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Lends an idle engine if there is one now.
    pub fn try_checkout(self: &Arc<Self>) -> Option<PooledEngine> {
        let mut state = self.lock();
        let engine = state.idle.pop()?;
        Some(PooledEngine {
            engine: Some(engine),
            generation: state.generation,
            pool: self.clone(),
        })
    }

    /// Replaces every engine: the new ones serve the next checkout; engines
    /// in use finish their task and are dropped. Returns the new generation.
    pub fn swap(&self, engines: Vec<Box<dyn Engine>>) -> u64 {
        let old = {
            let mut state = self.lock();
            state.generation += 1;
            std::mem::replace(&mut state.idle, engines)
        };
        self.returned.notify_all();
        // Dropping models can take a while: not under the lock.
        drop(old);
        self.generation()
    }

    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Wakes every waiting checkout with `None`; engines still lent out are
    /// dropped when they come back.
    pub fn close(&self) {
        self.lock().closed = true;
        self.returned.notify_all();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic never happens under this lock; a poisoned lock still
        // holds consistent state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An engine on loan: it goes back to its pool when dropped, on every path
/// (a finished task, an error, a panic unwinding through the worker), unless
/// the pool swapped in newer models meanwhile.
pub struct PooledEngine {
    engine: Option<Box<dyn Engine>>,
    generation: u64,
    pool: Arc<EnginePool>,
}

impl PooledEngine {
    pub fn engine(&mut self) -> &mut dyn Engine {
        self.engine
            .as_deref_mut()
            .expect("engine present until drop")
    }

    /// The pool generation this engine belongs to.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

impl Drop for PooledEngine {
    fn drop(&mut self) {
        let Some(engine) = self.engine.take() else {
            return;
        };
        let mut state = self.pool.lock();
        if state.generation == self.generation && !state.closed {
            state.idle.push(engine);
            drop(state);
            self.pool.returned.notify_one();
        } else {
            drop(state);
            drop(engine);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::Inference;
    use agent_core::{Output, TaskError, TaskType};
    use std::time::Duration;

    /// An engine that answers with its version: enough to see which
    /// generation served a task.
    struct Versioned(&'static str);

    impl Engine for Versioned {
        fn supports(&self, _: TaskType) -> bool {
            true
        }
        fn validate(&self, _: TaskType, _: &[u8]) -> Result<(), TaskError> {
            Ok(())
        }
        fn process(&mut self, _: TaskType, _: &[u8]) -> Result<Inference, TaskError> {
            Ok(Inference {
                output: Output {
                    class: 0,
                    confidence: 1.0,
                    label: String::new(),
                    boxes: Vec::new(),
                    model: "m".into(),
                    model_version: self.0.into(),
                },
                elapsed: Duration::ZERO,
            })
        }
        fn estimate(&self, _: TaskType) -> Duration {
            Duration::ZERO
        }
    }

    fn version(e: &mut PooledEngine) -> String {
        e.engine()
            .process(TaskType::ImageClassification, &[])
            .unwrap()
            .output
            .model_version
    }

    #[test]
    fn a_swap_serves_new_checkouts_and_retires_lent_engines() {
        let pool = EnginePool::new(vec![Box::new(Versioned("1")), Box::new(Versioned("1"))]);
        let mut lent = pool.checkout().unwrap();
        assert_eq!(version(&mut lent), "1");
        assert_eq!(pool.swap(vec![Box::new(Versioned("2"))]), 1);
        // The task in progress finishes on the old model.
        assert_eq!(version(&mut lent), "1");
        let mut fresh = pool.checkout().unwrap();
        assert_eq!(version(&mut fresh), "2");
        drop(lent); // retired, not returned
        assert!(pool.try_checkout().is_none(), "the old engine came back");
        drop(fresh);
        let mut again = pool.try_checkout().unwrap();
        assert_eq!(version(&mut again), "2");
    }

    #[test]
    fn an_engine_comes_back_when_a_task_panics() {
        let pool = EnginePool::new(vec![Box::new(Versioned("1"))]);
        let p = pool.clone();
        let r = std::thread::spawn(move || {
            let _e = p.checkout().unwrap();
            panic!("model crashed");
        })
        .join();
        assert!(r.is_err());
        assert!(pool.try_checkout().is_some());
    }

    #[test]
    fn close_wakes_a_waiting_checkout() {
        let pool = EnginePool::new(vec![Box::new(Versioned("1"))]);
        let held = pool.checkout().unwrap();
        let p = pool.clone();
        let waiter = std::thread::spawn(move || p.checkout().is_none());
        std::thread::sleep(Duration::from_millis(50));
        pool.close();
        assert!(waiter.join().unwrap(), "checkout after close must be None");
        drop(held);
        assert!(pool.try_checkout().is_none());
    }
}
