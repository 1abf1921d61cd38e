//! Socket.IO subscribers for `fanout --socketio`: the Engine.IO v4 WebSocket transport
//! and one namespace CONNECT, spoken as raw packets (what `socket.io-client` sends), so
//! the same worker measures Socket.IO and native fan-out alike.

use std::{net::Ipv4Addr, net::SocketAddr, time::Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpSocket;
use tokio_tungstenite::{
    client_async_with_config,
    tungstenite::{Message, client::IntoClientRequest, protocol::WebSocketConfig},
};

use crate::worker::{Target, Ws, reason};

/// The Engine.IO URL of a native target (`ws://host:port/ws` → `/socket.io/`).
fn engine_url(target: &Target) -> String {
    let rest = target.url.strip_prefix("ws://").unwrap_or(&target.url);
    let host = rest.split('/').next().unwrap_or(rest);
    format!("ws://{host}/socket.io/?EIO=4&transport=websocket")
}

/// The namespace of a `project:<id>` channel.
pub fn namespace(channel: &str) -> Result<String, String> {
    channel
        .strip_prefix("project:")
        .map(|id| format!("/project/{id}"))
        .ok_or_else(|| format!("{channel}: not a project channel"))
}

/// Opens an Engine.IO connection from `src` and connects the namespace of `channel`
/// with `token`. Returns the socket and the µs to the open packet and to the CONNECT
/// answer.
pub async fn open(target: &Target, src: Ipv4Addr, token: &str, channel: &str) -> Result<(Ws, u64, u64), String> {
    let began = Instant::now();
    let nsp = namespace(channel)?;
    let sock = TcpSocket::new_v4().map_err(|e| format!("socket_{:?}", e.kind()))?;
    sock.bind(SocketAddr::new(src.into(), 0)).map_err(|e| format!("bind_{:?}", e.kind()))?;
    let stream = sock.connect(target.addr()).await.map_err(|e| format!("connect_{:?}", e.kind()))?;
    let _ = stream.set_nodelay(true);
    let req = engine_url(target).into_client_request().map_err(|e| reason(&e))?;
    let cfg = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let (mut ws, _) = client_async_with_config(req, stream, Some(cfg)).await.map_err(|e| reason(&e))?;
    let first = next_text(&mut ws).await?;
    if !first.starts_with("0{") {
        return Err("no_open_packet".into());
    }
    let opened = began.elapsed().as_micros() as u64;
    let connect = format!("40{nsp},{}", serde_json::json!({ "token": token }));
    ws.send(Message::Text(connect.into())).await.map_err(|e| reason(&e))?;
    let answer = next_text(&mut ws).await?;
    if answer.starts_with(&format!("44{nsp},")) {
        let code = serde_json::from_str::<serde_json::Value>(&answer[4 + nsp.len()..])
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "unknown".into());
        return Err(format!("connect_error_{code}"));
    }
    if !answer.starts_with(&format!("40{nsp},")) {
        return Err("no_connect_answer".into());
    }
    Ok((ws, opened, began.elapsed().as_micros() as u64))
}

async fn next_text(ws: &mut Ws) -> Result<String, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
            Some(Ok(Message::Close(f))) => return Err(format!("closed_{}", f.map(|f| u16::from(f.code)).unwrap_or(0))),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(reason(&e)),
            None => return Err("eof".into()),
        }
    }
}
