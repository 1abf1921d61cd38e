//! Hub unit tests: shared encodings, slow consumers, large channels, gating.

use super::*;
use gateway_protocol::PrincipalKind;

fn conn(id: ConnId, enc: Encoding, frames: usize) -> (Arc<ConnHandle>, crate::conn::handle::Outbox) {
    let p = Principal { kind: PrincipalKind::User, id: format!("u{id}") };
    ConnHandle::new(id, format!("c{id}").into(), p, enc, frames, 1 << 20)
}

fn event(ch: &Channel) -> EventFrame {
    EventFrame {
        channel: ch.clone(),
        event: "e".into(),
        data: serde_json::json!({"x":1}),
        id: "m".into(),
        ts: 0,
        from: None,
        offset: None,
        epoch: None,
    }
}

#[tokio::test]
async fn fanout_shares_bytes_per_encoding() {
    let hub = Hub::default();
    let ch = Channel::parse("session:s").unwrap();
    let (a, mut ao) = conn(1, Encoding::Json, 8);
    let (b, mut bo) = conn(2, Encoding::Json, 8);
    let (c, mut co) = conn(3, Encoding::MsgPack, 8);
    assert!(hub.subscribe(&ch, &a));
    assert!(!hub.subscribe(&ch, &b));
    hub.subscribe(&ch, &c);
    assert_eq!(hub.deliver(event(&ch)), 3);
    let (Some(Message::Text(x)), Some(Message::Text(y))) = (ao.recv().await, bo.recv().await) else {
        panic!("text expected")
    };
    // Same allocation: one encode, shared.
    assert_eq!(x.as_str().as_ptr(), y.as_str().as_ptr());
    assert!(matches!(co.recv().await, Some(Message::Binary(_))));
    assert!(!hub.unsubscribe(&ch, 1));
    assert!(!hub.unsubscribe(&ch, 2));
    assert!(hub.unsubscribe(&ch, 3));
    assert!(!hub.has_subscribers(&ch));
    assert_eq!(hub.stats().subscriptions, 0);
}

#[tokio::test]
async fn overflow_closes_only_the_slow_one() {
    let hub = Hub::default();
    let ch = Channel::parse("session:s").unwrap();
    let (slow, _so) = conn(1, Encoding::Json, 2);
    let (fast, mut fo) = conn(2, Encoding::Json, 100);
    hub.subscribe(&ch, &slow);
    hub.subscribe(&ch, &fast);
    for _ in 0..5 {
        hub.deliver(event(&ch));
    }
    assert_eq!(slow.close_requested().map(|c| c.code), Some(gateway_protocol::CloseCode::SlowConsumer));
    assert!(fast.close_requested().is_none());
    for _ in 0..5 {
        assert!(fo.recv().await.is_some());
    }
}

#[test]
fn large_channels_swap_remove_through_the_index() {
    let hub = Hub::default();
    let ch = Channel::parse("session:big").unwrap();
    let conns: Vec<_> = (0..100).map(|i| conn(i, Encoding::Json, 8)).collect();
    for (c, _) in &conns {
        hub.subscribe(&ch, c);
    }
    assert!(!hub.subscribe(&ch, &conns[7].0), "a second subscribe is not a new subscriber");
    assert_eq!(hub.stats().subscriptions, 100);
    // Leave out of order: every survivor must still be found and delivered to.
    for id in (0..100).filter(|i| i % 3 == 0) {
        assert!(!hub.unsubscribe(&ch, id));
    }
    assert!(!hub.unsubscribe(&ch, 3), "already gone");
    assert_eq!(hub.stats().subscriptions, 66);
    assert_eq!(hub.deliver(event(&ch)), 66);
    for (c, _) in &conns {
        assert_eq!(c.queued_frames(), usize::from(c.id % 3 != 0));
    }
    for id in (0..100).filter(|i| i % 3 != 0) {
        hub.unsubscribe(&ch, id);
    }
    assert!(!hub.has_subscribers(&ch));
    assert_eq!(hub.stats(), HubStats::default());
}

#[test]
fn queue_bounds_and_burst_memory() {
    let p = Principal { kind: PrincipalKind::User, id: "u".into() };
    // Byte bound: 3 × 4 bytes fit in 12, the fourth frame closes.
    let (h, mut o) = ConnHandle::new(1, "c".into(), p.clone(), Encoding::Json, 100, 12);
    for _ in 0..3 {
        assert!(h.push(Message::Text("abcd".into())));
    }
    assert!(!h.push(Message::Text("abcd".into())));
    assert_eq!(h.close_requested().map(|c| c.code), Some(gateway_protocol::CloseCode::SlowConsumer));
    assert!(!h.push(Message::Text("a".into())), "closing: refused");
    assert_eq!(h.queued_bytes(), 12);
    assert_eq!(o.discard(), 12);
    assert_eq!((h.queued_frames(), h.queued_bytes()), (0, 0));
    // A burst grows the queue; emptying it gives the storage back.
    let (h, mut o) = ConnHandle::new(2, "c".into(), p, Encoding::Json, 1000, 1 << 20);
    for _ in 0..500 {
        assert!(h.push(Message::Text("x".into())));
    }
    let mut n = 0;
    while o.pop().is_some() {
        n += 1;
    }
    assert_eq!((n, h.queued_frames(), h.queued_bytes(), h.queue_capacity()), (500, 0, 0, 0));
}

#[test]
fn disconnect_by_principal() {
    let hub = Hub::default();
    let (a, _ao) = conn(1, Encoding::Json, 8);
    hub.register(a.clone());
    assert_eq!(hub.stats().connected_users, 1);
    assert_eq!(hub.disconnect(PrincipalKind::User, "u1", Close::bare(gateway_protocol::CloseCode::Disconnected)), 1);
    assert!(a.close_requested().is_some());
    hub.unregister(1);
    assert_eq!(hub.stats(), HubStats::default());
}

fn at(ch: &Channel, offset: u64) -> EventFrame {
    EventFrame { offset: Some(offset), epoch: Some("e".into()), id: format!("m{offset}"), ..event(ch) }
}

fn offsets(o: &mut crate::conn::handle::Outbox) -> Vec<u64> {
    let mut out = Vec::new();
    while let Some(Message::Text(t)) = o.pop() {
        let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
        out.push(v["offset"].as_u64().unwrap());
    }
    out
}

fn replay(ch: &Channel, range: std::ops::RangeInclusive<u64>) -> Vec<Held> {
    range
        .map(|n| {
            let m = to_message(Encoding::Json, &ServerFrame::Event(at(ch, n)));
            let len = message_len(&m);
            (n, m, len)
        })
        .collect()
}

#[test]
fn a_gate_queues_the_replay_before_the_live_events_each_once() {
    let hub = Hub::default();
    let ch = Channel::parse("session:s").unwrap();
    let (other, mut oo) = conn(1, Encoding::Json, 100);
    let (c, mut co) = conn(2, Encoding::Json, 100);
    hub.subscribe(&ch, &other);
    hub.deliver(at(&ch, 5));
    assert!(!hub.subscribe_gated(&ch, &c));
    // Live events while the replay is fetched: held, not queued.
    hub.deliver(at(&ch, 6));
    hub.deliver(at(&ch, 7));
    assert_eq!(c.queued_frames(), 0);
    assert_eq!(hub.stats().subscriptions, 2);
    // The replay (after offset 3) overlaps the held events: each offset once, in order.
    assert_eq!(hub.open_gate(&ch, 2, replay(&ch, 4..=6), Some(3)), 4);
    hub.deliver(at(&ch, 8));
    assert_eq!(offsets(&mut co), vec![4, 5, 6, 7, 8]);
    assert_eq!(offsets(&mut oo), vec![5, 6, 7, 8]);
    assert_eq!(hub.open_gate(&ch, 2, Vec::new(), None), 0, "no gate left");
}

#[test]
fn a_live_subscriber_gated_again_gets_only_what_it_missed() {
    let hub = Hub::default();
    let ch = Channel::parse("user:u").unwrap();
    let (c, mut co) = conn(1, Encoding::Json, 100);
    hub.deliver(at(&ch, 10));
    hub.subscribe(&ch, &c);
    hub.deliver(at(&ch, 11));
    hub.deliver(at(&ch, 12));
    assert_eq!(offsets(&mut co), vec![11, 12]);
    // It asks to recover after 8: 9 and 10 are missing; 11 and 12 it has.
    hub.subscribe_gated(&ch, &c);
    hub.deliver(at(&ch, 13));
    hub.open_gate(&ch, 1, replay(&ch, 9..=12), Some(8));
    assert_eq!(offsets(&mut co), vec![9, 10, 13]);
}

#[test]
fn leaving_while_gated_leaves_nothing_behind() {
    let hub = Hub::default();
    let ch = Channel::parse("session:s").unwrap();
    let (c, _co) = conn(1, Encoding::Json, 2);
    assert!(hub.subscribe_gated(&ch, &c));
    assert!(hub.has_subscribers(&ch));
    // A gate that outgrows the queue bounds closes the connection like a full queue.
    for n in 1..=3 {
        hub.deliver(at(&ch, n));
    }
    assert_eq!(c.close_requested().map(|c| c.code), Some(gateway_protocol::CloseCode::SlowConsumer));
    assert!(hub.unsubscribe(&ch, 1));
    assert!(!hub.has_subscribers(&ch));
    assert_eq!(hub.stats(), HubStats::default());
}

#[test]
fn a_replay_ahead_of_the_live_feed_and_a_second_recovery_deliver_nothing_twice() {
    let hub = Hub::default();
    let ch = Channel::parse("session:s").unwrap();
    let (c, mut co) = conn(1, Encoding::Json, 100);
    // The store already has 4..=7; the node has delivered only up to 5 so far.
    hub.deliver(at(&ch, 5));
    hub.subscribe_gated(&ch, &c);
    hub.open_gate(&ch, 1, replay(&ch, 3..=7), Some(2));
    // 6 and 7 still arrive live: already replayed, skipped; 8 is new.
    for n in 6..=8 {
        hub.deliver(at(&ch, n));
    }
    assert_eq!(offsets(&mut co), vec![3, 4, 5, 6, 7, 8]);
    // The client retries the same recovery: nothing it has comes again.
    hub.subscribe_gated(&ch, &c);
    hub.open_gate(&ch, 1, replay(&ch, 3..=8), Some(2));
    hub.deliver(at(&ch, 9));
    assert_eq!(offsets(&mut co), vec![9]);
}
