//! Native subscribers: one authenticated WebSocket with the gateway's own frames,
//! `connected` awaited and (optionally) one channel subscribed — what every scenario's
//! clients open (Socket.IO ones are in [`crate::sio`]).

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Instant,
};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpSocket;
use tokio_tungstenite::{
    client_async_with_config,
    tungstenite::{Message, client::IntoClientRequest, http::HeaderValue, protocol::WebSocketConfig},
};

use crate::worker::{Target, Ws, reason};

/// Opens one authenticated connection from `src`, waits for `connected`, then (when
/// `channel` is set) subscribes and waits for the response. Returns the socket and the
/// µs to `connected` and to the subscribe response.
pub async fn open(
    target: &Target,
    src: Ipv4Addr,
    token: &str,
    channel: Option<&str>,
) -> Result<(Ws, u64, u64), String> {
    let began = Instant::now();
    let sock = TcpSocket::new_v4().map_err(|e| format!("socket_{:?}", e.kind()))?;
    sock.bind(SocketAddr::new(src.into(), 0)).map_err(|e| format!("bind_{:?}", e.kind()))?;
    let stream = sock.connect(target.addr()).await.map_err(|e| format!("connect_{:?}", e.kind()))?;
    let _ = stream.set_nodelay(true);
    let mut req = target.url.as_str().into_client_request().map_err(|e| reason(&e))?;
    let bearer = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| e.to_string())?;
    req.headers_mut().insert("Authorization", bearer);
    let cfg = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let (mut ws, _) = client_async_with_config(req, stream, Some(cfg)).await.map_err(|e| reason(&e))?;
    // `connected` is the first frame.
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.as_str().contains("\"type\":\"connected\"") => break,
            Some(Ok(Message::Text(t))) if t.as_str().contains("\"type\":\"error\"") => {
                return Err("error_frame_before_connected".into());
            }
            Some(Ok(Message::Close(f))) => return Err(format!("closed_{}", f.map(|f| u16::from(f.code)).unwrap_or(0))),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(reason(&e)),
            None => return Err("eof_before_connected".into()),
        }
    }
    let handshake = began.elapsed().as_micros() as u64;
    let Some(channel) = channel else { return Ok((ws, handshake, handshake)) };
    let sub = serde_json::to_string(&gateway_protocol::ClientFrame::Subscribe {
        id: Some("bench".into()),
        channels: vec![channel.to_owned()],
        token: None,
        recover: Default::default(),
    })
    .map_err(|e| e.to_string())?;
    ws.send(Message::Text(sub.into())).await.map_err(|e| reason(&e))?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.as_str().contains("\"type\":\"response\"") => {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).map_err(|e| e.to_string())?;
                let ok = v["result"]["subscribed"].as_array().is_some_and(|a| a.iter().any(|c| c == channel));
                if !ok {
                    let code = v["result"]["rejected"][0]["code"].as_str().unwrap_or("unknown").to_owned();
                    return Err(format!("subscribe_rejected_{code}"));
                }
                break;
            }
            Some(Ok(Message::Close(f))) => return Err(format!("closed_{}", f.map(|f| u16::from(f.code)).unwrap_or(0))),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(reason(&e)),
            None => return Err("eof_before_subscribed".into()),
        }
    }
    Ok((ws, handshake, began.elapsed().as_micros() as u64))
}
