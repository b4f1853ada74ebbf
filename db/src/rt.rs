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

/// Waits `duration`.
pub async fn sleep(duration: Duration) {
    #[cfg(not(target_arch = "wasm32"))]
    tokio::time::sleep(duration).await;
    #[cfg(target_arch = "wasm32")]
    {
        // setTimeout takes milliseconds as an i32 (about 24 days at most).
        let ms = u32::try_from(duration.as_millis()).unwrap_or(u32::MAX);
        gloo_timers::future::TimeoutFuture::new(ms.min(i32::MAX as u32)).await;
    }
}

/// `work`, unless `duration` passes first (`None`). `work` is dropped then.
pub async fn timeout<T>(duration: Duration, work: impl Future<Output = T>) -> Option<T> {
    #[cfg(not(target_arch = "wasm32"))]
    return tokio::time::timeout(duration, work).await.ok();
    #[cfg(target_arch = "wasm32")]
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
