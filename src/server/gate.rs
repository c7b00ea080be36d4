//! A future polled only when its own waker fired: how a connection's task
//! waits for its rare events (eviction pressure, shutdown, the watchdog's
//! tick) beside the hyper connection it drives, without polling them each
//! time hyper wakes the task.
//!
//! A task that `select!`s over a hyper connection and a few watch channels
//! polls every branch at every wake-up, i.e. several times per request; a
//! `watch::Receiver::changed` future takes its channel's waiter lock on
//! each of those polls, and the listener's channels are shared by every
//! connection of both workers. Behind a [`Gate`] those futures get a waker
//! of their own: the task's waker is woken through it, and the gated future
//! is polled again only after that waker fired (or when the gate is
//! [opened](Gate::open) for a new future). What belongs here: that waker
//! bookkeeping. Not here: what the events mean (`conn`, `watchdog`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// The gated future's waker: notes the wake-up, then wakes the task.
#[derive(Debug, Default)]
struct Flag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// Polls a future only after its own waker fired (see the module doc).
#[derive(Debug)]
pub(super) struct Gate {
    flag: Arc<Flag>,
    waker: Waker,
}

impl Gate {
    /// An open gate: the first future polled through it is polled.
    pub(super) fn new() -> Gate {
        let flag = Arc::new(Flag::default());
        flag.woken.store(true, Ordering::Relaxed);
        let waker = Waker::from(flag.clone());
        Gate { flag, waker }
    }

    /// The next [`poll`](Gate::poll) polls its future whether or not a
    /// wake-up came: for a future that was never polled.
    pub(super) fn open(&self) {
        self.flag.woken.store(true, Ordering::Relaxed);
    }

    /// Poll `fut` if it was woken since its last poll (or the gate was
    /// opened), else `Pending` without touching it. Either way the task
    /// (`cx`) is woken when `fut`'s waker fires.
    pub(super) fn poll<F: Future + ?Sized>(
        &self,
        cx: &mut Context<'_>,
        fut: Pin<&mut F>,
    ) -> Poll<F::Output> {
        // Registered before the flag is read: a wake-up in between is not
        // lost, it wakes the task again.
        self.flag.task.register(cx.waker());
        if !self.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        fut.poll(&mut Context::from_waker(&self.waker))
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// A future that counts its polls and is ready once `ready` is set.
    struct Counted<'a> {
        polls: &'a AtomicUsize,
        ready: &'a AtomicBool,
        waker: &'a std::sync::Mutex<Option<Waker>>,
    }

    impl Future for Counted<'_> {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            if self.ready.load(Ordering::Relaxed) {
                return Poll::Ready(());
            }
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn polls_the_future_only_after_its_waker_fired() {
        let (polls, ready, waker) = (
            AtomicUsize::new(0),
            AtomicBool::new(false),
            std::sync::Mutex::new(None),
        );
        let mut fut = std::pin::pin!(Counted {
            polls: &polls,
            ready: &ready,
            waker: &waker,
        });
        let gate = Gate::new();
        let task_woken = Arc::new(Flag::default());
        let task_waker = Waker::from(task_woken.clone());
        let mut cx = Context::from_waker(&task_waker);

        // Open: polled once.
        assert!(gate.poll(&mut cx, fut.as_mut()).is_pending());
        assert_eq!(polls.load(Ordering::Relaxed), 1);
        // The task woken for something else: the future is left alone.
        for _ in 0..5 {
            assert!(gate.poll(&mut cx, fut.as_mut()).is_pending());
        }
        assert_eq!(polls.load(Ordering::Relaxed), 1);
        // Its own waker fires: the task is woken and the future polled.
        ready.store(true, Ordering::Relaxed);
        waker.lock().unwrap().take().unwrap().wake();
        assert!(
            task_woken.woken.load(Ordering::Relaxed),
            "the task is woken"
        );
        assert!(gate.poll(&mut cx, fut.as_mut()).is_ready());
        assert_eq!(polls.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn open_polls_a_new_future_once() {
        let gate = Gate::new();
        let polls = AtomicUsize::new(0);
        let mut first = std::pin::pin!(poll_fn(|_| {
            polls.fetch_add(1, Ordering::Relaxed);
            Poll::<()>::Pending
        }));
        poll_fn(|cx| {
            let _ = gate.poll(cx, first.as_mut());
            let _ = gate.poll(cx, first.as_mut());
            Poll::Ready(())
        })
        .await;
        assert_eq!(polls.load(Ordering::Relaxed), 1);
        gate.open();
        poll_fn(|cx| {
            let _ = gate.poll(cx, first.as_mut());
            Poll::Ready(())
        })
        .await;
        assert_eq!(polls.load(Ordering::Relaxed), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_gated_sleep_still_wakes_the_task() {
        let gate = Gate::new();
        let mut sleep = std::pin::pin!(tokio::time::sleep(std::time::Duration::from_secs(1)));
        // Resolves only if the timer's wake-up goes through the gate to
        // this task (with the clock paused, the runtime advances to it).
        poll_fn(|cx| gate.poll(cx, sleep.as_mut())).await;
    }
}
