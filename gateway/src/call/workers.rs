//! Media workers: calls run on single-threaded runtimes, one per core.
//!
//! A call wakes once per caller packet. On the shared multi-threaded runtime
//! that wake-up often lands on a parked worker: the thread whose epoll saw
//! the packet queues the task and futex-wakes another to steal it, and the
//! call's timer and its socket live in drivers every worker shares. On a
//! runtime of its own thread, a call's socket, timer and task stay on the
//! thread that owns them: the packet's thread runs the call, and no other
//! thread is woken for it. Measured in BENCHMARKS.md ("Calls on one
//! runtime per core").
//!
//! Signalling stays on the main runtime; a call talks to its endpoint shard
//! over the channels it always had. Each call goes to the worker running
//! the fewest calls, and stays there: no work stealing, so a long burst of
//! calls spreads by count, not by load.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::{AbortHandle, JoinSet};

/// How long a stopping worker gives its tasks' blocking work to finish.
const STOP_TIMEOUT: Duration = Duration::from_secs(1);

/// The runtimes calls run on. Dropping it stops them; calls still running
/// then are cancelled (the gateway drains calls before it gets there).
pub struct MediaWorkers {
    workers: Vec<Worker>,
}

struct Worker {
    handle: Handle,
    /// Calls running on this worker now.
    calls: Arc<AtomicUsize>,
    /// Dropped with the worker: its thread then stops its runtime.
    _stop: oneshot::Sender<()>,
}

impl MediaWorkers {
    /// Starts `count` worker threads (at least one), each running its own
    /// current-thread runtime with I/O and timers.
    pub fn start(count: usize) -> std::io::Result<Self> {
        let workers = (0..count.max(1))
            .map(Worker::start)
            .collect::<std::io::Result<_>>()?;
        Ok(Self { workers })
    }

    /// Runs `call` on the worker with the fewest calls, supervised by
    /// `tasks` as if spawned there: its end (or its panic) is joined the same way.
    pub fn spawn<F>(&self, tasks: &mut JoinSet<()>, call: F) -> AbortHandle
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let worker = self
            .workers
            .iter()
            .min_by_key(|w| w.calls.load(Ordering::Relaxed))
            .expect("at least one worker");
        let running = RunningCall::new(worker.calls.clone());
        tasks.spawn_on(
            async move {
                let _running = running;
                call.await;
            },
            &worker.handle,
        )
    }

    pub fn len(&self) -> usize {
        self.workers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Calls running on each worker, in order.
    pub fn calls(&self) -> Vec<usize> {
        self.workers
            .iter()
            .map(|w| w.calls.load(Ordering::Relaxed))
            .collect()
    }
}

impl Worker {
    fn start(index: usize) -> std::io::Result<Self> {
        let calls = Arc::new(AtomicUsize::new(0));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(format!("switchboard-media-{index}"))
            .spawn(move || {
                // Runs the calls until the gateway lets go of its workers.
                let _ = runtime.block_on(stopped);
                runtime.shutdown_timeout(STOP_TIMEOUT);
            })?;
        Ok(Self {
            handle,
            calls,
            _stop: stop,
        })
    }
}

/// Counts a call on its worker for as long as its task lives, however it ends.
struct RunningCall(Arc<AtomicUsize>);

impl RunningCall {
    fn new(calls: Arc<AtomicUsize>) -> Self {
        calls.fetch_add(1, Ordering::Relaxed);
        Self(calls)
    }
}

impl Drop for RunningCall {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_spread_over_workers_and_run_off_the_spawning_thread() {
        let workers = MediaWorkers::start(2).unwrap();
        let mut tasks = JoinSet::new();
        let (release, released) = tokio::sync::watch::channel(false);
        let (names_tx, mut names) = tokio::sync::mpsc::channel(4);
        for _ in 0..4 {
            let mut released = released.clone();
            let names_tx = names_tx.clone();
            workers.spawn(&mut tasks, async move {
                let name = std::thread::current().name().map(str::to_owned);
                names_tx.send(name).await.unwrap();
                let _ = released.wait_for(|r| *r).await;
            });
        }
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(names.recv().await.unwrap().unwrap());
        }
        seen.sort();
        assert_eq!(
            seen,
            [
                "switchboard-media-0",
                "switchboard-media-0",
                "switchboard-media-1",
                "switchboard-media-1"
            ]
        );
        assert_eq!(workers.calls(), [2, 2]);
        release.send(true).unwrap();
        while tasks.join_next().await.is_some() {}
        assert_eq!(workers.calls(), [0, 0]);
    }

    #[tokio::test]
    async fn a_call_that_panics_is_joined_as_a_panic_and_uncounted() {
        let workers = MediaWorkers::start(1).unwrap();
        let mut tasks = JoinSet::new();
        workers.spawn(&mut tasks, async { panic!("a bug in a call") });
        let joined = tasks.join_next().await.unwrap();
        assert!(joined.unwrap_err().is_panic());
        assert_eq!(workers.calls(), [0]);
    }

    #[tokio::test]
    async fn the_least_busy_worker_takes_the_next_call() {
        let workers = MediaWorkers::start(2).unwrap();
        let mut tasks = JoinSet::new();
        let (release, released) = tokio::sync::watch::channel(false);
        let hold = |mut released: tokio::sync::watch::Receiver<bool>| async move {
            let _ = released.wait_for(|r| *r).await;
        };
        workers.spawn(&mut tasks, hold(released.clone()));
        workers.spawn(&mut tasks, hold(released.clone()));
        workers.spawn(&mut tasks, async {});
        // The short call ends; its worker is the less busy one again.
        tasks.join_next().await.unwrap().unwrap();
        let calls = workers.calls();
        assert_eq!(calls.iter().sum::<usize>(), 2);
        assert_eq!(calls, [1, 1]);
        release.send(true).unwrap();
        while tasks.join_next().await.is_some() {}
    }
}
