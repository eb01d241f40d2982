//! The bound on the platform's blocking work: the store, KGSS and KeyDepot logic run on
//! tokio's blocking pool, at most `max_concurrent_work` at once.
//!
//! A request's permit moves into its blocking task and is given back when that work ends,
//! not when the request is abandoned (its timeout answered 408 or 504, its connection closed):
//! work left behind by abandoned requests still counts. An overloaded platform therefore
//! sheds new requests after `queue_timeout_ms` (REST 503 with `Retry-After`, SOAP
//! `SOA-02001`, both retryable) instead of queueing work that nobody waits for any more.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why blocking work did not give its result.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WorkError {
    /// Every permit stayed taken for the queue timeout.
    #[error("the platform is busy: {max} operations under way")]
    Busy { max: usize },
    /// The caller's share stayed full for the queue timeout ([`crate::share`]).
    #[error("this caller already has {max} requests under way")]
    CallerBusy { max: usize },
    /// The work panicked (a bug); the request gets a service error.
    #[error("the work failed: {0}")]
    Failed(String),
}

/// At most `max` blocking operations at once; a request waits up to `queue_timeout` for
/// its turn.
#[derive(Clone, Debug)]
pub struct WorkLimit {
    permits: Arc<Semaphore>,
    max: usize,
    queue_timeout: Duration,
    /// Requests refused for want of a turn, since the start.
    busy: Arc<AtomicU64>,
}

/// A turn of blocking work; given back when dropped.
#[derive(Debug)]
pub struct WorkPermit {
    _permit: OwnedSemaphorePermit,
}

impl WorkLimit {
    pub fn new(max: usize, queue_timeout: Duration) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max)),
            max,
            queue_timeout,
            busy: Arc::default(),
        }
    }

    /// Waits up to the queue timeout for a turn.
    pub async fn permit(&self) -> Result<WorkPermit, WorkError> {
        let acquire = self.permits.clone().acquire_owned();
        match tokio::time::timeout(self.queue_timeout, acquire).await {
            Ok(Ok(permit)) => Ok(WorkPermit { _permit: permit }),
            // The semaphore is never closed: only the timeout ends here.
            _ => {
                self.busy.fetch_add(1, Ordering::Relaxed);
                Err(WorkError::Busy { max: self.max })
            }
        }
    }

    /// Runs `f` on the blocking pool in its turn; the turn ends when `f` returns, even if
    /// the caller has stopped waiting for it. So does the place of the request's caller in
    /// its share ([`crate::share::current`]), when there is one.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, WorkError> {
        let permit = self.permit().await?;
        let share = crate::share::current();
        tokio::task::spawn_blocking(move || {
            let _turn = permit;
            let _share = share;
            f()
        })
        .await
        .map_err(|e| WorkError::Failed(e.to_string()))
    }

    /// Operations under way now.
    pub fn in_use(&self) -> usize {
        self.max - self.permits.available_permits()
    }

    /// The most operations at once (`max_concurrent_work`).
    pub fn max(&self) -> usize {
        self.max
    }

    /// Requests refused for want of a turn since the start.
    pub fn refused(&self) -> u64 {
        self.busy.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// Waits until `done` holds, failing with `what` after 5 s.
    async fn within_5_s(what: &str, done: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Work whose request was abandoned (here: its future dropped by a timeout, as the
    /// server's request timeout does) keeps its turn until it ends, so a new request is
    /// refused as busy meanwhile and served once it has ended.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn abandoned_work_keeps_its_turn_until_it_ends() {
        let limit = WorkLimit::new(1, Duration::from_millis(50));
        let (release, gate) = mpsc::channel::<()>();
        let (started_tx, started) = tokio::sync::oneshot::channel::<()>();
        let abandoned = tokio::spawn({
            let limit = limit.clone();
            async move {
                let slow = limit.run(move || {
                    let _ = started_tx.send(());
                    gate.recv().ok();
                    "slow"
                });
                tokio::time::timeout(Duration::from_millis(100), slow)
                    .await
                    .is_err()
            }
        });
        started.await.unwrap();
        assert!(abandoned.await.unwrap(), "the request timed out");
        assert_eq!(limit.in_use(), 1, "its work still runs");
        assert_eq!(
            limit.run(|| "fast").await,
            Err(WorkError::Busy { max: 1 }),
            "no turn while the abandoned work runs"
        );
        release.send(()).unwrap();
        within_5_s("the turn came back", || limit.in_use() == 0).await;
        assert_eq!(limit.run(|| "fast").await, Ok("fast"));
        assert_eq!(limit.refused(), 1);
    }

    /// The caller's place in its share goes with the work too: a caller whose abandoned
    /// request's work still runs keeps that place until the work ends.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn abandoned_work_keeps_its_callers_place() {
        use crate::share::{self, CallerKey, Shares};
        let limit = WorkLimit::new(4, Duration::from_millis(50));
        let shares = Shares::new(1, Duration::from_millis(50));
        let caller = CallerKey::of(None, [10, 0, 0, 1].into());
        let (release, gate) = mpsc::channel::<()>();
        let (started_tx, started) = tokio::sync::oneshot::channel::<()>();
        let place = shares.enter(caller.clone()).await.unwrap();
        let request = tokio::spawn({
            let limit = limit.clone();
            share::scope(place, async move {
                let slow = limit.run(move || {
                    let _ = started_tx.send(());
                    gate.recv().ok();
                });
                tokio::time::timeout(Duration::from_millis(100), slow).await
            })
        });
        started.await.unwrap();
        assert!(request.await.unwrap().is_err(), "the request was abandoned");
        assert!(
            shares.enter(caller.clone()).await.is_none(),
            "its work still holds the caller's one place"
        );
        release.send(()).unwrap();
        within_5_s("the place came back", || shares.callers() == 0).await;
        assert!(shares.enter(caller).await.is_some());
    }

    #[tokio::test]
    async fn a_request_waits_for_a_turn_given_back_within_the_queue_timeout() {
        let limit = WorkLimit::new(1, Duration::from_secs(5));
        let held = limit.permit().await.unwrap();
        let waiting = tokio::spawn({
            let limit = limit.clone();
            async move { limit.run(|| 7).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "it waits");
        drop(held);
        assert_eq!(waiting.await.unwrap(), Ok(7));
    }

    #[tokio::test]
    async fn a_panic_is_a_failure_not_a_lost_turn() {
        let limit = WorkLimit::new(1, Duration::from_millis(10));
        let failed = limit.run(|| -> u8 { panic!("a bug") }).await;
        assert!(matches!(failed, Err(WorkError::Failed(_))), "{failed:?}");
        assert_eq!(limit.run(|| 1).await, Ok(1));
    }
}
