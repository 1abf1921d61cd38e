//! The SDK's reconnect loop and offline queue on paused tokio time, without a network:
//! a token callback that always fails makes every connection attempt fail at once, so
//! only timers move the client.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use gateway_client::{Gateway, GatewayError, OverflowPolicy, QueueError, State, StopReason};
use serde_json::json;
use tokio::time::Instant;

/// A builder whose every attempt fails (the token source is down); counts attempts.
fn unreachable(calls: Arc<AtomicU32>) -> gateway_client::GatewayBuilder {
    Gateway::builder("ws://127.0.0.1:9/ws").token_source(move || {
        calls.fetch_add(1, Ordering::SeqCst);
        async { Err::<String, _>("auth service down") }
    })
}

/// The `(attempt, delay, virtual time)` of every `Reconnecting` until `Stopped`.
async fn reconnects(gw: &Gateway, limit: usize) -> (Vec<(u32, Duration, Instant)>, Option<StopReason>) {
    let mut rx = gw.state();
    let mut seen = Vec::new();
    loop {
        let s = rx.borrow_and_update().clone();
        match s {
            State::Reconnecting { attempt, delay, .. } if seen.last().is_none_or(|(a, _, _)| *a != attempt) => {
                seen.push((attempt, delay, Instant::now()));
            }
            State::Stopped(stop) => return (seen, Some(stop)),
            _ => {}
        }
        if seen.len() >= limit || rx.changed().await.is_err() {
            return (seen, None);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn backoff_delays_grow_within_one_to_thirty_seconds() {
    let calls = Arc::new(AtomicU32::new(0));
    // The top of every jitter range: the delay is the cap itself.
    let gw = unreachable(calls.clone()).jitter(|| 0.999_999).start().expect("config");
    let (seen, stopped) = reconnects(&gw, 9).await;
    assert!(stopped.is_none());
    let delays: Vec<u64> = seen.iter().map(|(_, d, _)| d.as_millis() as u64).collect();
    let caps = [1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000, 30_000];
    for (d, cap) in delays.iter().zip(caps) {
        assert!(*d <= cap && *d + 1 >= cap, "{delays:?}");
    }
    // The next attempt really waits its delay (virtual time).
    for w in seen.windows(2) {
        let waited = w[1].2 - w[0].2;
        assert!(waited >= w[0].1, "waited {waited:?} for a delay of {:?}", w[0].1);
        assert!(waited < w[0].1 + Duration::from_millis(50), "waited {waited:?} for {:?}", w[0].1);
    }
    assert_eq!(calls.load(Ordering::SeqCst), seen.len() as u32);
    gw.close().await;
    assert_eq!(*gw.state().borrow(), State::Stopped(StopReason::Closed));
}

#[tokio::test(start_paused = true)]
async fn jittered_delays_stay_within_the_cap() {
    let gw = unreachable(Arc::default()).start().expect("config");
    let (seen, _) = reconnects(&gw, 12).await;
    for (i, (_, d, _)) in seen.iter().enumerate() {
        let cap = Duration::from_secs(1u64 << i.min(5)).min(Duration::from_secs(30));
        assert!(*d <= cap, "attempt {i}: {d:?} > {cap:?}");
    }
    gw.close().await;
}

#[tokio::test(start_paused = true)]
async fn retry_limit_stops_after_n_failed_attempts() {
    let calls = Arc::new(AtomicU32::new(0));
    let gw = unreachable(calls.clone()).jitter(|| 0.5).max_retries(3).start().expect("config");
    let started = Instant::now();
    let stop = tokio::time::timeout(Duration::from_secs(60), gw.stopped()).await.expect("stopped in time");
    match stop {
        StopReason::RetriesExhausted { attempts, last } => {
            assert_eq!(attempts, 3);
            assert!(last.contains("auth service down"), "{last}");
        }
        other => panic!("unexpected stop: {other:?}"),
    }
    // The first attempt plus three retries, after 0.5 + 1 + 2 s.
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert!(started.elapsed() >= Duration::from_millis(3_500));
    // Calls after the stop fail at once with the reason.
    let e = gw.send("status:update", json!({})).await;
    assert!(matches!(e, Err(GatewayError::Stopped(StopReason::RetriesExhausted { .. }))), "{e:?}");
}

#[tokio::test(start_paused = true)]
async fn drop_oldest_queue_is_bounded_and_evicts_the_oldest() {
    let gw = unreachable(Arc::default()).offline_queue(3, OverflowPolicy::DropOldest).start().expect("config");
    let mut sends = Vec::new();
    for i in 0..5 {
        let g = gw.clone();
        sends.push(tokio::spawn(async move { g.send("status:update", json!({ "n": i })).await }));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The two oldest were pushed out; the other three still wait.
    for (i, s) in sends.drain(..2).enumerate() {
        let r = tokio::time::timeout(Duration::from_secs(1), s).await.expect("evicted promptly").expect("task");
        assert_eq!(r, Err(GatewayError::Queue(QueueError::Evicted(3))), "send {i}");
    }
    for s in &sends {
        assert!(!s.is_finished());
    }
    gw.close().await;
    for s in sends {
        let r = s.await.expect("task");
        assert_eq!(r, Err(GatewayError::Stopped(StopReason::Closed)));
    }
}

#[tokio::test(start_paused = true)]
async fn error_policy_refuses_the_newest() {
    let gw = unreachable(Arc::default()).offline_queue(2, OverflowPolicy::Error).start().expect("config");
    let mut waiting = Vec::new();
    for i in 0..2 {
        let g = gw.clone();
        waiting.push(tokio::spawn(async move { g.publish("session:s", "typing", json!({ "n": i })).await }));
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    let third = gw.publish("session:s", "typing", json!({"n": 2})).await;
    assert_eq!(third, Err(GatewayError::Queue(QueueError::Full(2))));
    assert!(waiting.iter().all(|w| !w.is_finished()));
    gw.close().await;
    for w in waiting {
        assert_eq!(w.await.expect("task"), Err(GatewayError::Stopped(StopReason::Closed)));
    }
}

#[tokio::test(start_paused = true)]
async fn offline_requests_time_out_and_bad_names_are_refused() {
    let gw = unreachable(Arc::default()).start().expect("config");
    let r = gw.request("sessions.create", json!({}), Duration::from_secs(2)).await;
    assert_eq!(r, Err(GatewayError::Timeout(Duration::from_secs(2))));
    let bad = gw.send("bad name", json!({})).await;
    assert!(matches!(bad, Err(GatewayError::EventName(_))), "{bad:?}");
    // Without a queue, calls while offline fail at once.
    let noq = unreachable(Arc::default()).no_offline_queue().start().expect("config");
    assert_eq!(noq.send("status:update", json!({})).await, Err(GatewayError::NotConnected));
    gw.close().await;
    noq.close().await;
}
