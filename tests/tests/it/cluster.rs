//! Cluster behaviour on real NATS and Redis: three nodes (unless said), one fresh pair of
//! servers per test, every wait bounded.

use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use gateway::Config;
use gateway_client::{Client, Connect, Received};
use gateway_protocol::{ClientFrame, ServerFrame};
use gateway_tests::{
    node::{
        AGENT_KEYS, TestNode, connected, eventually, next_app_event, next_event, response, subscribe, test_config,
        user_token,
    },
    servers::{NatsServer, RedisServer},
};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(5);

struct Cluster {
    nats: NatsServer,
    redis: RedisServer,
    nodes: Vec<TestNode>,
}

fn clustered(nats: &NatsServer, redis: &RedisServer) -> Config {
    let mut cfg = test_config();
    cfg.nats_url = nats.url.clone();
    cfg.redis_url = redis.url.clone();
    cfg.channels.session_policy = gateway::config::SessionPolicy::Authenticated;
    cfg
}

async fn cluster(n: usize, tweak: impl Fn(&mut Config)) -> anyhow::Result<Cluster> {
    let nats = NatsServer::start().await?;
    let redis = RedisServer::start().await?;
    let mut nodes = Vec::new();
    for _ in 0..n {
        let mut cfg = clustered(&nats, &redis);
        tweak(&mut cfg);
        nodes.push(TestNode::start(cfg).await?);
    }
    Ok(Cluster { nats, redis, nodes })
}

async fn user_on(node: &TestNode, sub: &str) -> anyhow::Result<Client> {
    let mut c = node.user(sub, &["p1"]).await?;
    connected(&mut c).await?;
    Ok(c)
}

async fn agent_on(node: &TestNode, key: &str) -> Result<Client, gateway_client::ClientError> {
    Client::connect(Connect::new(node.ws("")).header("X-API-Key", key)).await
}

async fn nats_publish(url: &str, subject: &str, body: Value) -> anyhow::Result<()> {
    let c = async_nats::connect(url).await?;
    c.publish(subject.to_owned(), serde_json::to_vec(&body)?.into()).await?;
    c.flush().await?;
    Ok(())
}

#[tokio::test]
async fn backend_publish_reaches_subscribers_on_every_node_and_no_one_else() -> anyhow::Result<()> {
    let cl = cluster(3, |_| {}).await?;
    let mut subs = Vec::new();
    for (i, node) in cl.nodes.iter().enumerate() {
        let mut c = user_on(node, &format!("u{i}")).await?;
        subscribe(&mut c, "s", &["session:s1"], None).await?;
        subs.push(c);
    }
    let mut outsider = user_on(&cl.nodes[0], "outsider").await?;
    subscribe(&mut outsider, "s", &["session:s2"], None).await?;
    nats_publish(&cl.nats.url, "gw.ev.session.s1", json!({"event": "message.created", "data": {"n": 1}})).await?;
    for c in &mut subs {
        let e = next_app_event(c).await?;
        assert_eq!(
            (e.channel.as_str(), e.event.as_str(), &e.data),
            ("session:s1", "message.created", &json!({"n": 1}))
        );
    }
    // The outsider gets nothing but its own presence events.
    let got = outsider.recv_timeout(Duration::from_millis(300)).await;
    assert!(
        !matches!(&got, Ok(Received::Frame(ServerFrame::Event(e))) if e.channel.as_str() == "session:s1"),
        "{got:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_node_holds_nats_subscriptions_only_for_channels_with_local_subscribers() -> anyhow::Result<()> {
    let cl = cluster(2, |_| {}).await?;
    let mut a = user_on(&cl.nodes[0], "ua").await?;
    subscribe(&mut a, "s", &["session:only-a"], None).await?;
    let subs = cl.nats.subscriptions().await?;
    // Session channels keep history: nodes listen on the stream's re-published subject.
    assert_eq!(subs.iter().filter(|s| *s == "gw.live.session.only-a").count(), 1, "{subs:?}");
    a.send(&ClientFrame::Unsubscribe { id: Some("u".into()), channels: vec!["session:only-a".into()] }).await?;
    response(&mut a, "u").await?.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    eventually(T, || async {
        let subs = cl.nats.subscriptions().await.ok()?;
        (!subs.iter().any(|s| s == "gw.live.session.only-a")).then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn client_publish_on_node_a_reaches_node_c() -> anyhow::Result<()> {
    let cl = cluster(3, |_| {}).await?;
    let mut a = user_on(&cl.nodes[0], "ua").await?;
    let mut c = user_on(&cl.nodes[2], "uc").await?;
    subscribe(&mut a, "s", &["session:chat"], None).await?;
    subscribe(&mut c, "s", &["session:chat"], None).await?;
    a.send(&ClientFrame::Publish {
        id: Some("p1".into()),
        channel: "session:chat".into(),
        event: "typing".into(),
        data: json!({"who": "ua"}),
    })
    .await?;
    let e = next_app_event(&mut c).await?;
    assert_eq!((e.event.as_str(), &e.data), ("typing", &json!({"who": "ua"})));
    Ok(())
}

#[tokio::test]
async fn task_assigned_reaches_the_agent_wherever_it_is() -> anyhow::Result<()> {
    let cl = cluster(3, |_| {}).await?;
    let (_, key) = AGENT_KEYS[0];
    let mut agent = agent_on(&cl.nodes[1], key).await?;
    connected(&mut agent).await?;
    // Published over HTTP on another node, and by a backend over NATS.
    let (status, _) = cl.nodes[0].publish("agent:a1", "task:assigned", json!({"id": "t1"})).await?;
    assert_eq!(status, 202);
    assert_eq!(next_event(&mut agent).await?.data, json!({"id": "t1"}));
    nats_publish(&cl.nats.url, "gw.ev.agent.a1", json!({"event": "task:assigned", "data": {"id": "t2"}})).await?;
    assert_eq!(next_event(&mut agent).await?.data, json!({"id": "t2"}));
    Ok(())
}

#[tokio::test]
async fn upstream_send_reaches_a_queue_group_with_gateway_set_headers() -> anyhow::Result<()> {
    let cl = cluster(1, |_| {}).await?;
    let backend = async_nats::connect(&cl.nats.url).await?;
    let mut sub = backend.queue_subscribe("gw.up.status.update", "workers".into()).await?;
    backend.flush().await?;
    let (_, key) = AGENT_KEYS[1];
    let mut agent = agent_on(&cl.nodes[0], key).await?;
    let (conn_id, _) = connected(&mut agent).await?;
    let forged = json!({"status": "busy", "Gw-Principal-Id": "admin", "headers": {"Gw-Principal-Kind": "user"}});
    agent
        .send(&ClientFrame::Send {
            id: Some("m1".into()),
            event: "status:update".into(),
            data: forged.clone(),
            correlation_id: None,
            timestamp: None,
        })
        .await?;
    let msg = tokio::time::timeout(T, sub.next()).await?.ok_or_else(|| anyhow::anyhow!("no message"))?;
    let h = msg.headers.clone().unwrap_or_default();
    let get = |k: &str| h.get(k).map(|v| v.to_string());
    assert_eq!(get("Gw-Principal-Kind").as_deref(), Some("agent"));
    assert_eq!(get("Gw-Principal-Id").as_deref(), Some("a2"));
    assert_eq!(get("Gw-Connection").as_deref(), Some(conn_id.as_str()));
    assert_eq!(get("Gw-Node").as_deref(), Some(cl.nodes[0].cfg.node_id.as_str()));
    assert_eq!(serde_json::from_slice::<Value>(&msg.payload)?, forged);
    let ack = agent.recv_until(T, |r| matches!(r, Received::Frame(ServerFrame::Ack { .. })).then_some(())).await;
    assert!(ack.is_ok());
    Ok(())
}

#[tokio::test]
async fn requests_round_trip_time_out_and_find_no_responders() -> anyhow::Result<()> {
    let cl = cluster(1, |c| c.fabric.request_timeout_ms = 300).await?;
    let backend = async_nats::connect(&cl.nats.url).await?;
    let mut echo = backend.subscribe("gw.rpc.sessions.create").await?;
    let _silent = backend.subscribe("gw.rpc.slow.method").await?;
    backend.flush().await?;
    let responder = backend.clone();
    tokio::spawn(async move {
        while let Some(m) = echo.next().await {
            let who = m.headers.as_ref().and_then(|h| h.get("Gw-Principal-Id")).map(|v| v.to_string());
            let params: Value = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
            let body = json!({"created": params["title"], "by": who});
            if let Some(reply) = m.reply {
                let _ = responder.publish(reply, serde_json::to_vec(&body).unwrap_or_default().into()).await;
            }
        }
    });
    let mut c = user_on(&cl.nodes[0], "alice").await?;
    let req = |id: &str, method: &str| ClientFrame::Request {
        id: id.into(),
        method: method.into(),
        params: json!({"title": "hello"}),
    };
    c.send(&req("r1", "sessions.create")).await?;
    assert_eq!(
        response(&mut c, "r1").await?.map_err(|e| anyhow::anyhow!("{e:?}"))?,
        json!({"created": "hello", "by": "alice"})
    );
    c.send(&req("r2", "slow.method")).await?;
    assert_eq!(response(&mut c, "r2").await?.err().map(|e| e.code), Some(gateway_protocol::ErrorCode::Timeout));
    c.send(&req("r3", "nobody.home")).await?;
    assert_eq!(response(&mut c, "r3").await?.err().map(|e| e.code), Some(gateway_protocol::ErrorCode::Unavailable));
    Ok(())
}

#[tokio::test]
async fn subscribe_proxy_allows_and_denies() -> anyhow::Result<()> {
    let cl = cluster(1, |c| c.channels.session_policy = gateway::config::SessionPolicy::Proxy).await?;
    let backend = async_nats::connect(&cl.nats.url).await?;
    let mut asks = backend.subscribe("gw.auth.subscribe").await?;
    backend.flush().await?;
    let responder = backend.clone();
    tokio::spawn(async move {
        while let Some(m) = asks.next().await {
            let q: Value = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
            let allow = q["channel"] == "session:open" && q["principal"]["id"] == "alice";
            if let Some(reply) = m.reply {
                let _ = responder
                    .publish(reply, serde_json::to_vec(&json!({"allow": allow})).unwrap_or_default().into())
                    .await;
            }
        }
    });
    let mut c = user_on(&cl.nodes[0], "alice").await?;
    let r = subscribe(&mut c, "s", &["session:open", "session:closed"], None).await?;
    assert_eq!(r["subscribed"], json!(["session:open"]));
    assert_eq!(r["rejected"][0]["channel"], "session:closed");
    assert_eq!(r["rejected"][0]["code"], "forbidden");
    Ok(())
}

#[tokio::test]
async fn per_agent_limit_holds_across_three_nodes_under_a_race() -> anyhow::Result<()> {
    let cl = cluster(3, |_| {}).await?;
    let (_, key) = AGENT_KEYS[2];
    for round in 0..3 {
        let attempts = (0..6).map(|i| {
            let url = cl.nodes[i % 3].ws("");
            async move { Client::connect(Connect::new(url).header("X-API-Key", key)).await }
        });
        let results = futures_util::future::join_all(attempts).await;
        let ok = results.iter().filter(|r| r.is_ok()).count();
        let refused: Vec<_> = results
            .iter()
            .filter_map(|r| match r {
                Err(gateway_client::ClientError::Refused { status, body }) => Some((*status, body["code"].clone())),
                _ => None,
            })
            .collect();
        assert_eq!(ok, 5, "round {round}: {refused:?}");
        assert_eq!(refused, vec![(429, json!("limit_exceeded"))], "round {round}");
        let clients: Vec<Client> = results.into_iter().filter_map(Result::ok).collect();
        for c in clients {
            c.close().await?;
        }
        // Slots come back once the nodes see the closes.
        eventually(T, || async {
            let c = Client::connect(Connect::new(cl.nodes[0].ws("")).header("X-API-Key", key)).await.ok()?;
            let _ = c.close().await;
            Some(())
        })
        .await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test]
async fn presence_is_identical_from_every_node() -> anyhow::Result<()> {
    let cl = cluster(3, |_| {}).await?;
    let mut clients = Vec::new();
    for (i, node) in cl.nodes.iter().enumerate() {
        let mut c = user_on(node, &format!("member{i}")).await?;
        subscribe(&mut c, "s", &["project:p1"], None).await?;
        clients.push(c);
    }
    let mut answers = Vec::new();
    for (i, c) in clients.iter_mut().enumerate() {
        let id = format!("g{i}");
        c.send(&ClientFrame::Request {
            id: id.clone(),
            method: "presence.get".into(),
            params: json!({"channel": "project:p1"}),
        })
        .await?;
        answers.push(response(c, &id).await?.map_err(|e| anyhow::anyhow!("{e:?}"))?["members"].clone());
    }
    let expected = json!([
        {"kind": "user", "id": "member0"}, {"kind": "user", "id": "member1"}, {"kind": "user", "id": "member2"}
    ]);
    for a in answers {
        assert_eq!(a, expected);
    }
    // /health shows the cluster totals.
    let h = cl.nodes[0].health().await?;
    assert_eq!(h["cluster"]["nodes"], 3, "{h}");
    Ok(())
}

#[tokio::test]
async fn nats_restart_mid_stream_resumes_delivery_on_every_node() -> anyhow::Result<()> {
    let mut cl = cluster(3, |_| {}).await?;
    let mut subs = Vec::new();
    for (i, node) in cl.nodes.iter().enumerate() {
        let mut c = user_on(node, &format!("u{i}")).await?;
        subscribe(&mut c, "s", &["broadcast:all"], None).await?;
        subs.push(c);
    }
    cl.nodes[0].publish("broadcast:all", "before", json!(1)).await?;
    for c in &mut subs {
        assert_eq!(next_app_event(c).await?.event, "before");
    }
    cl.nats.stop().await;
    eventually(Duration::from_secs(10), || async {
        let r = reqwest::get(cl.nodes[0].http("/ready")).await.ok()?;
        (r.status() == 503).then_some(())
    })
    .await?;
    let down_at = std::time::Instant::now();
    cl.nats.restart().await.context("restart nats")?;
    // A publish made while a node is still reconnecting may be lost (NATS is at most
    // once), so keep publishing until every node has delivered again.
    let url = cl.nodes[0].http("/api/publish");
    let publisher = tokio::spawn(async move {
        for n in 0..400 {
            let _ =
                gateway_tests::node::post(&url, json!({"channel": "broadcast:all", "event": "after", "data": n})).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    for (i, c) in subs.iter_mut().enumerate() {
        let e = c
            .recv_until(Duration::from_secs(20), |r| match r {
                Received::Frame(ServerFrame::Event(e)) if e.event == "after" => Some(e.clone()),
                _ => None,
            })
            .await
            .with_context(|| format!("node {i} did not deliver after the restart"))?;
        assert_eq!(e.channel.as_str(), "broadcast:all");
    }
    publisher.abort();
    eprintln!("delivery resumed {} ms after the NATS restart began", down_at.elapsed().as_millis());
    for node in &cl.nodes {
        let url = node.http("/ready");
        eventually(Duration::from_secs(10), || async {
            (reqwest::get(&url).await.ok()?.status() == 200).then_some(())
        })
        .await
        .context("node not ready again")?;
    }
    Ok(())
}

#[tokio::test]
async fn redis_restart_re_establishes_presence_and_counts() -> anyhow::Result<()> {
    let mut cl = cluster(2, |c| {
        c.presence.lease_ms = 2_000;
        c.presence.refresh_ms = 200;
    })
    .await?;
    let mut a = user_on(&cl.nodes[0], "alice").await?;
    subscribe(&mut a, "s", &["project:p1"], None).await?;
    cl.redis.stop().await;
    cl.redis.restart().await?;
    let mut b = user_on(&cl.nodes[1], "bob").await?;
    subscribe(&mut b, "s", &["project:p1"], None).await?;
    // Alice's entry is back once node 0 refreshes its leases into the empty Redis.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let members = loop {
        b.send(&ClientFrame::Request {
            id: "g".into(),
            method: "presence.get".into(),
            params: json!({"channel": "project:p1"}),
        })
        .await?;
        let m = response(&mut b, "g").await?.map_err(|e| anyhow::anyhow!("{e:?}"))?["members"].clone();
        if m.as_array().map(Vec::len) == Some(2) || tokio::time::Instant::now() > deadline {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(members, json!([{"kind": "user", "id": "alice"}, {"kind": "user", "id": "bob"}]));
    drop(a);
    Ok(())
}

#[tokio::test]
async fn disconnect_command_closes_a_principal_everywhere() -> anyhow::Result<()> {
    let cl = cluster(3, |_| {}).await?;
    let mut tabs = Vec::new();
    for node in &cl.nodes {
        tabs.push(user_on(node, "mallory").await?);
    }
    let (status, _) = gateway_tests::node::post(
        &cl.nodes[1].http("/api/disconnect"),
        json!({"kind": "user", "id": "mallory", "reason": "kicked by test"}),
    )
    .await?;
    assert_eq!(status, 202);
    for t in &mut tabs {
        let notice = t
            .recv_until(T, |r| match r {
                Received::Frame(ServerFrame::Disconnecting { reason, reconnect }) => Some((*reason, *reconnect)),
                _ => None,
            })
            .await?;
        assert_eq!(notice, (gateway_protocol::DisconnectReason::Kicked, false));
        assert_eq!(t.closed(T).await?, Some(4010));
    }
    Ok(())
}

#[tokio::test]
async fn token_for_user_is_valid_everywhere() -> anyhow::Result<()> {
    let cl = cluster(2, |_| {}).await?;
    let t = user_token("roamer", &[], &[], Duration::from_secs(60));
    for node in &cl.nodes {
        let mut c = Client::connect(Connect::new(node.ws(&format!("?token={t}")))).await?;
        connected(&mut c).await?;
    }
    Ok(())
}
