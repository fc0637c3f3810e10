//! Undoing what a run created (namespaces, the cgroup, files) on every way
//! out: normal return, error or panic (the guard's drop) and SIGINT,
//! SIGTERM or SIGHUP (a signal thread). The probe's kernel objects need
//! nothing here: file descriptors hold them, and they go with the process.

use std::sync::{Arc, Mutex};

type Action = Box<dyn FnOnce() + Send>;

#[derive(Default)]
pub struct Cleanup {
    actions: Mutex<Vec<Action>>,
}

impl Cleanup {
    /// Blocks the termination signals in the calling thread, and so in
    /// every thread started from it later (call it first thing in main),
    /// and runs the registered actions when one arrives, then exits 130.
    pub fn install(name: &'static str) -> Guard {
        let cleanup = Arc::new(Cleanup::default());
        let c = Arc::clone(&cleanup);
        let installed = jitter_lab::sys::on_termination_signal(move |sig| {
            eprintln!("{name}: {}; cleaning up", sig.as_str());
            c.run();
            std::process::exit(130);
        });
        if let Err(e) = installed {
            eprintln!("{name}: {e:#}; Ctrl-C may leave namespaces behind")
        }
        Guard(cleanup)
    }

    /// Registers an undo action; actions run last registered first.
    pub fn push(&self, f: impl FnOnce() + Send + 'static) {
        self.actions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(f));
    }

    /// Runs (and forgets) every action.
    pub fn run(&self) {
        let actions = std::mem::take(&mut *self.actions.lock().unwrap_or_else(|e| e.into_inner()));
        for a in actions.into_iter().rev() {
            a();
        }
    }
}

/// Runs the cleanup when dropped (normal exit, error, panic).
pub struct Guard(Arc<Cleanup>);

impl std::ops::Deref for Guard {
    type Target = Cleanup;
    fn deref(&self) -> &Cleanup {
        &self.0
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.run();
    }
}
