//! Pending caps and read deadlines, without sockets.

use super::*;

fn limits(max_pending: usize, pending_per_ip: u32) -> Limits {
    Limits { max_pending, pending_per_ip, ..Limits::default() }
}

#[test]
fn pending_caps_per_ip_and_per_node_and_release() {
    let pending = Arc::new(Pending::default());
    let l = limits(3, 2);
    let (a, b): (IpAddr, IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
    let a1 = pending.claim(a, true, &l).unwrap();
    let _a2 = pending.claim(a, true, &l).unwrap();
    assert_eq!(pending.claim(a, true, &l).err(), Some(Over::Ip));
    let _b1 = pending.claim(b, true, &l).unwrap();
    assert_eq!(pending.claim(b, true, &l).err(), Some(Over::Node));
    drop(a1);
    assert!(pending.claim(a, true, &l).is_ok(), "a released claim makes room");
    assert_eq!(pending.total.load(Relaxed), 2);
    drop(_b1);
    assert!(!pending.per_ip.lock().unwrap().contains_key(&b), "entries leave at zero");
    // A trusted proxy is not counted per address: only the node cap applies.
    let _p1 = pending.claim(b, false, &l).unwrap();
    let _p2 = pending.claim(b, false, &l).unwrap();
    assert_eq!(pending.claim(b, false, &l).err(), Some(Over::Node));
    assert!(!pending.per_ip.lock().unwrap().contains_key(&b));
}

#[tokio::test(start_paused = true)]
async fn deadlines_follow_the_request_cycle() {
    let cfg = HttpConfig { header_timeout_ms: 1_000, idle_timeout_ms: 5_000, ..HttpConfig::default() };
    let ctl = SocketCtl::new(&cfg);
    let born = ctl.born;
    // A fresh socket: the first head within the header timeout, bytes or not.
    assert_eq!(ctl.read_deadline(), Some((born + ms(1_000), "idle")));
    ctl.on_read(10);
    assert_eq!(ctl.read_deadline(), Some((born + ms(1_000), "header")));
    // A request in progress is never timed.
    ctl.request_started();
    tokio::time::advance(ms(3_000)).await;
    assert_eq!(ctl.read_deadline(), None);
    ctl.request_done();
    // Keep-alive silence: the idle timeout from the end of the request.
    assert_eq!(ctl.read_deadline(), Some((born + ms(8_000), "idle")));
    // A next head begun: the header timeout from its first byte.
    tokio::time::advance(ms(2_000)).await;
    ctl.on_read(1);
    assert_eq!(ctl.read_deadline(), Some((born + ms(6_000), "header")));
    // After the upgrade: nothing.
    ctl.upgraded.store(true, Relaxed);
    assert_eq!(ctl.read_deadline(), None);
}
