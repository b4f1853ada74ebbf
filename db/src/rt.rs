//! Time for async code on every target: tokio's timers natively, the browser's `setTimeout`
//! in wasm32 (through `gloo-timers`), and an [`Instant`] that works in both.

use std::future::Future;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

/// A monotonic instant (`std::time::Instant` natively; `performance.now()` in a browser,
/// where the standard one panics).
#[cfg(not(target_arch = "wasm32"))]
pub use std::time::Instant;
/// A monotonic instant (`std::time::Instant` natively; `performance.now()` in a browser,
/// where the standard one panics).
#[cfg(target_arch = "wasm32")]
pub use web_time::Instant;

/// The wall clock now (`SystemTime::now()` panics in a browser; there it is `Date.now()`).
pub fn system_now() -> std::time::SystemTime {
    #[cfg(not(target_arch = "wasm32"))]
    return std::time::SystemTime::now();
    #[cfg(target_arch = "wasm32")]
    return std::time::UNIX_EPOCH + Duration::from_secs_f64(js_sys::Date::now().max(0.0) / 1000.0);
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_ms() -> u64 {
    #[cfg(not(target_arch = "wasm32"))]
    {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
    #[cfg(target_arch = "wasm32")]
    {
        // `Date.now()`: milliseconds, a whole number of them (never negative in practice).
        js_sys::Date::now().max(0.0) as u64
    }
}

/// Now, on the clock of the code that asks: a sync engine's (`sync::engine::Engine`)
/// while it runs the sync client (the time its caller gave it), else the machine's.
pub fn now() -> Instant {
    if let Some(clock) = virt::current() {
        return clock.now();
    }
    Instant::now()
}

/// [`now`] plus `duration`, or as far as an instant goes (a timeout of centuries is no
/// timeout, not a panic).
pub fn after(duration: Duration) -> Instant {
    let now = now();
    now.checked_add(duration)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
        .unwrap_or(now)
}

/// Waits `duration` (on a sync engine's clock while it runs the sync client).
pub async fn sleep(duration: Duration) {
    if let Some(clock) = virt::current() {
        return clock.sleep(duration).await;
    }
    #[cfg(not(target_arch = "wasm32"))]
    tokio::time::sleep(duration).await;
    #[cfg(target_arch = "wasm32")]
    {
        // setTimeout takes milliseconds as an i32 (about 24 days at most); rounded up, so the
        // wait is never shorter than asked (a timer that woke early would wait again).
        let ms = u32::try_from(duration.as_micros().div_ceil(1000)).unwrap_or(u32::MAX);
        gloo_timers::future::TimeoutFuture::new(ms.min(i32::MAX as u32)).await;
    }
}

/// `work`, unless `duration` passes first (`None`). `work` is dropped then.
pub async fn timeout<T>(duration: Duration, work: impl Future<Output = T>) -> Option<T> {
    #[cfg(not(target_arch = "wasm32"))]
    if virt::current().is_none() {
        return tokio::time::timeout(duration, work).await.ok();
    }
    {
        let mut work = pin!(work);
        let mut timer = pin!(sleep(duration));
        std::future::poll_fn(|cx| {
            if let Poll::Ready(v) = work.as_mut().poll(cx) {
                return Poll::Ready(Some(v));
            }
            match timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }
}

/// Which of two futures completed first ([`first`]).
pub enum Either<A, B> {
    /// The first one.
    Left(A),
    /// The second one.
    Right(B),
}

/// Runs `a` and `b` together until one completes (`a` is polled first); the other is
/// dropped, so it must be cancel-safe or given by reference.
pub async fn first<A: Future, B: Future>(a: A, b: B) -> Either<A::Output, B::Output> {
    let mut a = pin!(a);
    let mut b = pin!(b);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(v) = a.as_mut().poll(cx) {
            return Poll::Ready(Either::Left(v));
        }
        if let Poll::Ready(v) = b.as_mut().poll(cx) {
            return Poll::Ready(Either::Right(v));
        }
        Poll::Pending
    })
    .await
}

/// Random bytes from the operating system (through the TLS library's source), or the
/// browser's `crypto.getRandomValues`.
pub(crate) fn random<const N: usize>() -> crate::Result<[u8; N]> {
    let mut buf = [0u8; N];
    let failed = |_| crate::Error::CorruptMeta {
        reason: "the operating system gave no random bytes for the client identity".into(),
    };
    #[cfg(not(target_arch = "wasm32"))]
    quinn::rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut buf)
        .map_err(failed)?;
    #[cfg(target_arch = "wasm32")]
    getrandom::getrandom(&mut buf).map_err(failed)?;
    Ok(buf)
}

/// The clock of an [`Engine`](crate::sync::engine::Engine): the time its caller last gave
/// it, and the timers the code it runs waits on (the earliest is when it wants to run
/// again). Set for the thread only while the engine runs that code.
pub(crate) mod virt {
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex, PoisonError};
    use std::task::{Poll, Waker};
    use std::time::Duration;

    use super::Instant;

    /// A clock its owner moves.
    #[derive(Debug)]
    pub(crate) struct Clock {
        state: Mutex<State>,
        /// Whether it never reads behind the machine's clock (a real driver's: time spent
        /// inside a run, say blocked on a commit, counts), or only moves when told (a
        /// test's simulated time).
        live: bool,
    }

    #[derive(Debug)]
    struct State {
        now: Instant,
        next_timer: u64,
        /// Waiting timers: deadline and number (unique) to the task to wake.
        timers: BTreeMap<(Instant, u64), Waker>,
    }

    thread_local! {
        static CURRENT: RefCell<Option<Arc<Clock>>> = const { RefCell::new(None) };
    }

    /// The clock of the engine running on this thread now, if any.
    pub(crate) fn current() -> Option<Arc<Clock>> {
        CURRENT.with(|c| c.borrow().clone())
    }

    /// Runs `f` with `clock` as this thread's clock (the one before comes back after).
    pub(crate) fn with<T>(clock: &Arc<Clock>, f: impl FnOnce() -> T) -> T {
        struct Restore(Option<Arc<Clock>>);
        impl Drop for Restore {
            fn drop(&mut self) {
                let before = self.0.take();
                CURRENT.with(|c| *c.borrow_mut() = before);
            }
        }
        let _restore = Restore(CURRENT.with(|c| c.borrow_mut().replace(clock.clone())));
        f()
    }

    impl Clock {
        /// A clock at `now` that moves only when told (`Engine::open`, native).
        #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
        pub(crate) fn new(now: Instant) -> Arc<Clock> {
            Clock::make(now, false)
        }

        /// A clock that never reads behind the machine's (its timers still fire when it is
        /// told the time): the built-in driver's.
        pub(crate) fn live() -> Arc<Clock> {
            Clock::make(Instant::now(), true)
        }

        fn make(now: Instant, live: bool) -> Arc<Clock> {
            Arc::new(Clock {
                state: Mutex::new(State {
                    now,
                    next_timer: 0,
                    timers: BTreeMap::new(),
                }),
                live,
            })
        }

        fn state(&self) -> std::sync::MutexGuard<'_, State> {
            // The state stays whole if a holder panicked: every change is one assignment.
            self.state.lock().unwrap_or_else(PoisonError::into_inner)
        }

        pub(crate) fn now(&self) -> Instant {
            let told = self.state().now;
            if self.live {
                told.max(Instant::now())
            } else {
                told
            }
        }

        /// Moves the clock to `now` (never back) and wakes the timers due.
        pub(crate) fn advance(&self, now: Instant) {
            let due: Vec<Waker> = {
                let mut s = self.state();
                if now > s.now {
                    s.now = now;
                }
                let now = s.now;
                let later = s.timers.split_off(&(now, u64::MAX));
                std::mem::replace(&mut s.timers, later)
                    .into_values()
                    .collect()
            };
            for waker in due {
                waker.wake();
            }
        }

        /// When the earliest waiting timer is due.
        pub(crate) fn next_deadline(&self) -> Option<Instant> {
            self.state().timers.keys().next().map(|(at, _)| *at)
        }

        pub(crate) fn sleep(self: &Arc<Self>, duration: Duration) -> Sleep {
            let deadline = self.now().checked_add(duration);
            Sleep {
                clock: self.clone(),
                deadline,
                timer: None,
            }
        }
    }

    /// A timer of a [`Clock`] (`deadline` `None`: never, past what an instant can say).
    pub(crate) struct Sleep {
        clock: Arc<Clock>,
        deadline: Option<Instant>,
        timer: Option<u64>,
    }

    impl std::future::Future for Sleep {
        type Output = ();

        fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
            let this = &mut *self;
            let now = this.clock.now();
            let mut s = this.clock.state();
            let Some(deadline) = this.deadline else {
                return Poll::Pending;
            };
            if let Some(n) = this.timer {
                s.timers.remove(&(deadline, n));
            }
            if now >= deadline {
                this.timer = None;
                return Poll::Ready(());
            }
            let n = *this.timer.get_or_insert_with(|| {
                s.next_timer += 1;
                s.next_timer
            });
            s.timers.insert((deadline, n), cx.waker().clone());
            Poll::Pending
        }
    }

    impl Drop for Sleep {
        fn drop(&mut self) {
            if let (Some(deadline), Some(n)) = (self.deadline, self.timer) {
                self.clock.state().timers.remove(&(deadline, n));
            }
        }
    }
}
