//! Channels (contract §3): the subscribe permission matrix, `?subscribe=` at connect, the
//! per-connection channel limit, HTTP publishes reaching every subscriber and only them,
//! the publish API's own auth, client `publish`, and the built-in request methods.

use std::time::Duration;

use gateway::config::SessionPolicy;
use gateway_client::{Client, Connect};
use gateway_protocol::{ClientFrame, ErrorCode, Principal, PrincipalKind};
use gateway_tests::node::{
    ADMIN_KEY, AGENT_KEYS, TestNode, WAIT, assert_no_app_event, assert_quiet, channel_token, connected, next_app_event,
    next_error, next_event, response, subscribe, test_config, user_token,
};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(300);
const QUIET: Duration = Duration::from_millis(300);

/// Connects a user with `projects` and `roles` and waits for `connected`.
async fn user(node: &TestNode, sub: &str, projects: &[&str], roles: &[&str]) -> anyhow::Result<Client> {
    let t = user_token(sub, projects, roles, LONG);
    let mut c = Client::connect(Connect::new(node.ws("")).bearer(&t)).await?;
    connected(&mut c).await?;
    Ok(c)
}

/// The rejected entries of a subscribe result as (channel, code).
fn rejected(r: &Value) -> Vec<(String, String)> {
    r["rejected"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| (e["channel"].as_str().unwrap_or("").to_owned(), e["code"].as_str().unwrap_or("").to_owned()))
        .collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

/// The result of a request, or its error code.
async fn request(c: &mut Client, id: &str, method: &str, params: Value) -> anyhow::Result<Result<Value, ErrorCode>> {
    c.send(&ClientFrame::Request { id: id.into(), method: method.into(), params }).await?;
    Ok(response(c, id).await?.map_err(|e| e.code))
}

#[tokio::test]
async fn subscribe_permission_matrix() -> anyhow::Result<()> {
    let node = TestNode::embedded().await?;
    let mut u1 = user(&node, "u1", &["p1"], &[]).await?;
    let r = subscribe(
        &mut u1,
        "s1",
        &[
            "user:u1",
            "user:u2",
            "project:p1",
            "project:p2",
            "broadcast:all",
            "agent:a1",
            "session:s1",
            "nope",
            "user:",
            "galaxy:x",
            "project:has space",
        ],
        None,
    )
    .await?;
    assert_eq!(r["subscribed"], json!(["user:u1", "project:p1", "broadcast:all"]), "{r}");
    let want = [
        ("user:u2", "forbidden"),
        ("project:p2", "forbidden"),
        ("agent:a1", "forbidden"),
        ("session:s1", "forbidden"),
        ("nope", "bad_channel"),
        ("user:", "bad_channel"),
        ("galaxy:x", "bad_channel"),
        ("project:has space", "bad_channel"),
    ];
    assert_eq!(rejected(&r), pairs(&want), "{r}");
    assert!(r["rejected"][0]["message"].as_str().is_some_and(|m| !m.is_empty()), "{r}");

    // Session channels under the default `token` policy.
    let ok = channel_token("session:s1", "u1");
    let r = subscribe(&mut u1, "s2", &["session:s1"], Some(&ok)).await?;
    assert_eq!(r["subscribed"], json!(["session:s1"]), "{r}");
    let r = subscribe(&mut u1, "s3", &["session:s2"], Some(&ok)).await?;
    assert_eq!(rejected(&r), pairs(&[("session:s2", "forbidden")]), "wrong-channel token: {r}");
    let theirs = channel_token("session:s3", "u2");
    let r = subscribe(&mut u1, "s4", &["session:s3"], Some(&theirs)).await?;
    assert_eq!(rejected(&r), pairs(&[("session:s3", "forbidden")]), "another user's token: {r}");
    let r = subscribe(&mut u1, "s5", &["session:s4"], Some("garbage")).await?;
    assert_eq!(rejected(&r), pairs(&[("session:s4", "forbidden")]), "{r}");

    // `*` projects, admins, agents.
    let mut star = user(&node, "u3", &["*"], &[]).await?;
    let r = subscribe(&mut star, "s1", &["project:anything", "project:p9"], None).await?;
    assert_eq!(r["subscribed"], json!(["project:anything", "project:p9"]), "{r}");
    let mut admin = user(&node, "root", &[], &["admin"]).await?;
    let everywhere = ["user:u2", "agent:a1", "project:zzz", "session:x", "broadcast:b"];
    let r = subscribe(&mut admin, "s1", &everywhere, None).await?;
    assert_eq!(r["subscribed"], json!(everywhere), "{r}");
    let mut agent = Client::connect(Connect::new(node.ws("")).bearer(AGENT_KEYS[0].1)).await?;
    connected(&mut agent).await?;
    let r = subscribe(&mut agent, "s1", &["agent:a1", "agent:a2", "user:u1", "broadcast:all"], None).await?;
    assert_eq!(r["subscribed"], json!(["agent:a1", "broadcast:all"]), "{r}");
    assert_eq!(rejected(&r), pairs(&[("agent:a2", "forbidden"), ("user:u1", "forbidden")]), "{r}");
    node.stop().await
}

#[tokio::test]
async fn session_policy_authenticated_opens_sessions() -> anyhow::Result<()> {
    let mut cfg = test_config();
    cfg.channels.session_policy = SessionPolicy::Authenticated;
    let node = TestNode::start(cfg).await?;
    let mut u = user(&node, "u1", &[], &[]).await?;
    let r = subscribe(&mut u, "s1", &["session:any"], None).await?;
    assert_eq!(r["subscribed"], json!(["session:any"]), "{r}");
    node.stop().await
}

#[tokio::test]
async fn session_policy_proxy_without_a_backend_is_unavailable() -> anyhow::Result<()> {
    let mut cfg = test_config();
    cfg.channels.session_policy = SessionPolicy::Proxy;
    let node = TestNode::start(cfg).await?;
    let mut u = user(&node, "u1", &[], &[]).await?;
    let r = subscribe(&mut u, "s1", &["session:any", "broadcast:b"], None).await?;
    assert_eq!(r["subscribed"], json!(["broadcast:b"]), "{r}");
    assert_eq!(rejected(&r), pairs(&[("session:any", "unavailable")]), "{r}");
    node.stop().await
}

#[tokio::test]
async fn subscribe_at_connect() -> anyhow::Result<()> {
    let node = TestNode::embedded().await?;
    let t = user_token("u1", &["p1"], &[], LONG);
    let url = node.ws("?subscribe=project:p1,project:p2,broadcast:news,bad");
    let mut c = Client::connect(Connect::new(url).bearer(&t)).await?;
    connected(&mut c).await?;
    let mut errors = vec![next_error(&mut c).await?, next_error(&mut c).await?];
    errors.sort_by_key(|e| e.message.clone());
    assert_eq!(errors[0].code, ErrorCode::BadChannel, "{errors:?}");
    assert!(errors[0].message.starts_with("bad"), "{errors:?}");
    assert_eq!(errors[1].code, ErrorCode::Forbidden, "{errors:?}");
    assert!(errors[1].message.starts_with("project:p2"), "{errors:?}");
    let list = request(&mut c, "r1", "channels.list", Value::Null).await?;
    assert_eq!(list, Ok(json!({"channels": ["user:u1", "project:p1", "broadcast:news"]})));
    node.publish("project:p1", "hello", json!(1)).await?;
    assert_eq!(next_event(&mut c).await?.event, "hello");
    node.stop().await
}

#[tokio::test]
async fn max_channels_per_connection() -> anyhow::Result<()> {
    let mut cfg = test_config();
    cfg.limits.max_channels = 3;
    let node = TestNode::start(cfg).await?;
    let mut c = user(&node, "u1", &[], &[]).await?;
    // user:u1 is the first of the three.
    let r = subscribe(&mut c, "s1", &["broadcast:a", "broadcast:b", "broadcast:c"], None).await?;
    assert_eq!(r["subscribed"], json!(["broadcast:a", "broadcast:b"]), "{r}");
    assert_eq!(rejected(&r), pairs(&[("broadcast:c", "limit_exceeded")]), "{r}");
    // Re-joining a held channel is not a new one; leaving frees a slot.
    let r = subscribe(&mut c, "s2", &["broadcast:a"], None).await?;
    assert_eq!(r["subscribed"], json!(["broadcast:a"]), "{r}");
    c.send(&ClientFrame::Unsubscribe { id: Some("u1".into()), channels: vec!["broadcast:a".into()] }).await?;
    let r = response(&mut c, "u1").await?.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    assert_eq!(r, json!({"unsubscribed": ["broadcast:a"], "rejected": []}));
    // Leaving what was never joined, or a bad name, is reported per channel.
    c.send(&ClientFrame::Unsubscribe { id: Some("u2".into()), channels: vec!["broadcast:zz".into(), "zz".into()] })
        .await?;
    let r = response(&mut c, "u2").await?.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    assert_eq!(r["unsubscribed"], json!([]), "{r}");
    assert_eq!(rejected(&r), pairs(&[("broadcast:zz", "not_found"), ("zz", "bad_channel")]), "{r}");
    let r = subscribe(&mut c, "s3", &["broadcast:c"], None).await?;
    assert_eq!(r["subscribed"], json!(["broadcast:c"]), "{r}");
    node.stop().await
}

#[tokio::test]
async fn http_publish_reaches_every_subscriber_and_only_them() -> anyhow::Result<()> {
    let node = TestNode::embedded().await?;
    let mut tab1 = user(&node, "u1", &["p1"], &[]).await?;
    let mut tab2 = user(&node, "u1", &["p1"], &[]).await?;
    let mut other = user(&node, "u2", &["p1"], &[]).await?;

    // The user channel: both tabs of u1, not u2.
    let (status, body) = node.publish("user:u1", "notify", json!({"n": 1})).await?;
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().unwrap_or_default().to_owned();
    for tab in [&mut tab1, &mut tab2] {
        let ev = next_event(tab).await?;
        assert_eq!(
            (ev.channel.as_str(), ev.event.as_str(), &ev.data, ev.id.as_str()),
            ("user:u1", "notify", &json!({"n": 1}), id.as_str())
        );
        assert!(ev.ts > 0);
    }
    assert_quiet(&mut other, QUIET).await?;

    // A project channel: whoever joined it (tab1 and u2), not tab2.
    subscribe(&mut tab1, "s1", &["project:p1"], None).await?;
    subscribe(&mut other, "s1", &["project:p1"], None).await?;
    node.publish("project:p1", "deployed", json!({"v": 2})).await?;
    assert_eq!(next_app_event(&mut tab1).await?.event, "deployed");
    assert_eq!(next_app_event(&mut other).await?.event, "deployed");
    assert_no_app_event(&mut tab2, QUIET).await?;

    // After unsubscribing, nothing more.
    other.send(&ClientFrame::Unsubscribe { id: Some("x".into()), channels: vec!["project:p1".into()] }).await?;
    response(&mut other, "x").await?.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    node.publish("project:p1", "again", json!(null)).await?;
    assert_eq!(next_app_event(&mut tab1).await?.event, "again");
    assert_no_app_event(&mut other, QUIET).await?;

    // A channel nobody joined is accepted and delivered to no one.
    let (status, _) = node.publish("user:nobody", "x", json!(1)).await?;
    assert_eq!(status, 202);
    assert_no_app_event(&mut tab1, QUIET).await?;
    node.stop().await
}

#[tokio::test]
async fn http_publish_needs_the_admin_key_and_a_valid_channel() -> anyhow::Result<()> {
    let node = TestNode::embedded().await?;
    let http = reqwest::Client::new();
    let url = node.http("/api/publish");
    let body = json!({"channel": "broadcast:all", "event": "e", "data": 1});
    let r = http.post(&url).json(&body).send().await?;
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(r.json::<Value>().await?["code"], "unauthorized");
    let r = http.post(&url).bearer_auth("wrong-key").json(&body).send().await?;
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(r.json::<Value>().await?["code"], "unauthorized");
    let r = http.post(&url).header("X-API-Key", ADMIN_KEY).json(&body).send().await?;
    assert_eq!(r.status().as_u16(), 401, "the admin key travels as a bearer token");
    let bad = json!({"channel": "nope:x", "event": "e", "data": 1});
    let r = http.post(&url).bearer_auth(ADMIN_KEY).json(&bad).send().await?;
    assert_eq!(r.status().as_u16(), 400);
    let b: Value = r.json().await?;
    assert_eq!(b["code"], "bad_channel", "{b}");
    assert!(b["message"].as_str().is_some_and(|m| !m.is_empty()), "{b}");
    let r = http.post(&url).bearer_auth(ADMIN_KEY).body("not json").send().await?;
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(r.json::<Value>().await?["code"], "bad_request");
    let r = http.post(&url).bearer_auth(ADMIN_KEY).json(&json!({"channel": "broadcast:a", "event": ""})).send().await?;
    assert_eq!(r.status().as_u16(), 400);
    let r = http.post(&url).bearer_auth(ADMIN_KEY).json(&body).send().await?;
    assert_eq!(r.status().as_u16(), 202);
    assert!(r.json::<Value>().await?["id"].as_str().is_some_and(|id| !id.is_empty()));
    node.stop().await
}

#[tokio::test]
async fn client_publish_where_the_namespace_allows_it() -> anyhow::Result<()> {
    let node = TestNode::embedded().await?;
    let mut a = user(&node, "u1", &["p1"], &[]).await?;
    let mut b = user(&node, "u2", &["p1"], &[]).await?;
    let mut outsider = user(&node, "u3", &["p1"], &[]).await?;
    subscribe(&mut a, "s", &["session:s1", "project:p1"], Some(&channel_token("session:s1", "u1"))).await?;
    subscribe(&mut b, "s", &["session:s1"], Some(&channel_token("session:s1", "u2"))).await?;
    let publish = |id: &str, channel: &str| ClientFrame::Publish {
        id: Some(id.into()),
        channel: channel.into(),
        event: "typing".into(),
        data: json!({"who": "u1"}),
    };
    a.send(&publish("p1", "session:s1")).await?;
    a.recv_until(WAIT, |r| {
        matches!(r, gateway_client::Received::Frame(gateway_protocol::ServerFrame::Ack { id }) if id == "p1")
            .then_some(())
    })
    .await?;
    let ev = next_event(&mut b).await?;
    assert_eq!((ev.channel.as_str(), ev.event.as_str(), &ev.data), ("session:s1", "typing", &json!({"who": "u1"})));
    // Not in a namespace without client publishes, even when subscribed.
    a.send(&publish("p2", "project:p1")).await?;
    assert_eq!(response(&mut a, "p2").await?.map_err(|e| e.code), Err(ErrorCode::Forbidden));
    // Not before subscribing; a bad channel is bad_channel.
    outsider.send(&publish("p3", "session:s1")).await?;
    assert_eq!(response(&mut outsider, "p3").await?.map_err(|e| e.code), Err(ErrorCode::Forbidden));
    outsider.send(&publish("p4", "session:")).await?;
    assert_eq!(response(&mut outsider, "p4").await?.map_err(|e| e.code), Err(ErrorCode::BadChannel));
    assert_quiet(&mut b, QUIET).await?;
    node.stop().await
}

#[tokio::test]
async fn built_in_requests() -> anyhow::Result<()> {
    let node = TestNode::embedded().await?;
    let mut a = user(&node, "u1", &[], &[]).await?;
    let mut b = user(&node, "u2", &[], &[]).await?;
    subscribe(&mut a, "s", &["session:s1", "broadcast:all"], Some(&channel_token("session:s1", "u1"))).await?;
    subscribe(&mut b, "s", &["session:s1"], Some(&channel_token("session:s1", "u2"))).await?;
    // a saw b arrive.
    let ev = next_event(&mut a).await?;
    assert_eq!((ev.event.as_str(), &ev.data), ("presence.join", &json!({"kind": "user", "id": "u2"})));

    let list = request(&mut a, "r1", "channels.list", json!({})).await?;
    assert_eq!(list, Ok(json!({"channels": ["user:u1", "session:s1", "broadcast:all"]})));
    let members = request(&mut a, "r2", "presence.get", json!({"channel": "session:s1"})).await?;
    let want =
        json!({"channel": "session:s1", "members": [{"kind": "user", "id": "u1"}, {"kind": "user", "id": "u2"}]});
    assert_eq!(members, Ok(want));
    let stats = request(&mut b, "r3", "presence.stats", json!({"channel": "session:s1"})).await?;
    let want = json!({"channel": "session:s1", "stats": {"connections": 2, "users": 2, "agents": 0}});
    assert_eq!(stats, Ok(want));
    // Errors: no backend, not subscribed, no channel, a namespace without presence.
    assert_eq!(request(&mut a, "r4", "sessions.create", json!({"x": 1})).await?, Err(ErrorCode::Unavailable));
    assert_eq!(
        request(&mut b, "r5", "presence.get", json!({"channel": "session:s9"})).await?,
        Err(ErrorCode::Forbidden)
    );
    assert_eq!(request(&mut b, "r6", "presence.get", json!({})).await?, Err(ErrorCode::BadRequest));
    assert_eq!(
        request(&mut a, "r7", "presence.get", json!({"channel": "broadcast:all"})).await?,
        Err(ErrorCode::NotFound)
    );

    // b leaves: a sees it, and presence follows.
    b.close().await?;
    let ev = next_event(&mut a).await?;
    assert_eq!((ev.event.as_str(), &ev.data), ("presence.leave", &json!({"kind": "user", "id": "u2"})));
    let members = request(&mut a, "r8", "presence.get", json!({"channel": "session:s1"})).await?;
    assert_eq!(members, Ok(json!({"channel": "session:s1", "members": [{"kind": "user", "id": "u1"}]})));
    node.stop().await
}

#[tokio::test]
async fn client_publishes_carry_their_publisher_and_cannot_fake_presence() -> anyhow::Result<()> {
    let node = TestNode::embedded().await?;
    let mut a = node.user("pa", &[]).await?;
    let mut b = node.user("pb", &[]).await?;
    connected(&mut a).await?;
    connected(&mut b).await?;
    subscribe(&mut a, "s", &["session:room"], Some(&channel_token("session:room", "pa"))).await?;
    subscribe(&mut b, "s", &["session:room"], Some(&channel_token("session:room", "pb"))).await?;
    a.send(&ClientFrame::Publish {
        id: Some("p1".into()),
        channel: "session:room".into(),
        event: "typing".into(),
        data: json!({}),
    })
    .await?;
    let e = next_app_event(&mut b).await?;
    assert_eq!(e.from, Some(Principal { kind: PrincipalKind::User, id: "pa".into() }));
    a.send(&ClientFrame::Publish {
        id: Some("p2".into()),
        channel: "session:room".into(),
        event: "presence.leave".into(),
        data: json!({"kind": "user", "id": "pb"}),
    })
    .await?;
    let err = response(&mut a, "p2").await?.err().map(|e| e.code);
    assert_eq!(err, Some(ErrorCode::Forbidden));
    Ok(())
}

#[tokio::test]
async fn a_subscribe_may_not_name_more_channels_than_a_connection_holds() -> anyhow::Result<()> {
    let mut cfg = test_config();
    cfg.limits.max_channels = 5;
    let node = TestNode::start(cfg).await?;
    let mut c = node.user("many", &["*"]).await?;
    connected(&mut c).await?;
    // More names than a connection may hold: refused whole with one error, before any
    // per-name work (a frame of 65,000 empty names used to cost ~1,000 normal ones).
    let names: Vec<String> = (0..50).map(|i| format!("project:p{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    c.send(&ClientFrame::Subscribe {
        id: Some("s".into()),
        channels: names.clone(),
        token: None,
        recover: Default::default(),
    })
    .await?;
    let e = response(&mut c, "s").await?.err().map(|e| e.code);
    assert_eq!(e, Some(ErrorCode::LimitExceeded));
    let empty = vec![String::new(); 20_000];
    let frame = serde_json::to_string(&json!({"type": "subscribe", "id": "big", "channels": empty}))?;
    c.send_text(&frame).await?;
    let answer = c.recv_message(WAIT).await?;
    assert!(answer.len() < 200, "one small error, got {} bytes", answer.len());
    c.send(&ClientFrame::Subscribe { id: None, channels: names.clone(), token: None, recover: Default::default() })
        .await?;
    assert_eq!(next_error(&mut c).await?.code, ErrorCode::LimitExceeded);
    // Within the bound: user:many holds one slot, so four of five join.
    let r = subscribe(&mut c, "s1", &refs[..5], None).await?;
    assert_eq!(r["subscribed"].as_array().map(Vec::len), Some(4), "{r}");
    assert_eq!(rejected(&r), pairs(&[("project:p4", "limit_exceeded")]), "{r}");
    // Refused names count against the checks too: five names the user may not join.
    let names: Vec<String> = (0..5).map(|i| format!("user:other{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut c2 = node.user("many2", &[]).await?;
    connected(&mut c2).await?;
    let r = subscribe(&mut c2, "s2", &refs, None).await?;
    let codes: Vec<&str> = r["rejected"].as_array().into_iter().flatten().filter_map(|x| x["code"].as_str()).collect();
    assert_eq!(codes, vec!["forbidden"; 5], "{r}");
    node.stop().await
}
