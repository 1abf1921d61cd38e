//! The raw test client: one socket, no reconnect. Connect with any credential carrier
//! and encoding, send typed frames, receive typed frames (or the flat shape as JSON), and
//! see refusals and close codes as values. Used by the integration tests and the bench
//! tool, and by the SDK's connection task to open each socket.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use gateway_protocol::{ClientFrame, Encoding, ServerFrame};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{self, client::IntoClientRequest, http::HeaderValue, protocol::WebSocketConfig},
};

/// The WebSocket message type of [`Client::send_raw`] and [`Client::recv_message`].
pub use tokio_tungstenite::tungstenite::Message;

/// What went wrong on the client side.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The handshake was refused with an HTTP status and (usually) a JSON body.
    #[error("refused with {status}: {body}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The `{"code","message"}` body.
        body: Value,
    },
    /// The WebSocket failed.
    #[error("websocket: {0}")]
    Ws(#[from] tungstenite::Error),
    /// Nothing arrived in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// A frame could not be decoded.
    #[error("undecodable frame: {0}")]
    Decode(String),
    /// The URL or a header was invalid.
    #[error("bad request: {0}")]
    Request(String),
}

/// One thing received.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    /// A canonical frame (JSON or MessagePack connections).
    Frame(ServerFrame),
    /// A flat-shape frame, as JSON.
    Flat(Value),
    /// The server closed: code and reason (None without a close frame).
    Closed(Option<(u16, String)>),
}

impl Received {
    /// The close code, if this is a close.
    pub fn close_code(&self) -> Option<u16> {
        match self {
            Received::Closed(c) => c.as_ref().map(|(code, _)| *code),
            _ => None,
        }
    }
}

/// How to connect.
#[derive(Debug, Clone, Default)]
pub struct Connect {
    /// `ws://host:port/ws?…` (query included).
    pub url: String,
    /// The encoding; when `subprotocol` is true it is asked for by `Sec-WebSocket-Protocol`.
    pub encoding: Encoding,
    /// Negotiate by subprotocol (true) or rely on the URL's `?format=` (false).
    pub subprotocol: bool,
    /// Extra headers, e.g. `Authorization`, `X-API-Key`, `Origin`.
    pub headers: Vec<(String, String)>,
    /// A fixed socket receive buffer (bytes), which also turns off the kernel's
    /// autotuning; small values make a client that stops reading back up quickly.
    pub recv_buffer: Option<u32>,
}

impl Connect {
    /// Connect to `url` with JSON and no extra headers.
    pub fn new(url: impl Into<String>) -> Self {
        Connect {
            url: url.into(),
            encoding: Encoding::Json,
            subprotocol: false,
            headers: Vec::new(),
            recv_buffer: None,
        }
    }

    /// Adds a header.
    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }

    /// Uses `Authorization: Bearer <token>`.
    pub fn bearer(self, token: &str) -> Self {
        self.header("Authorization", &format!("Bearer {token}"))
    }

    /// Negotiates `encoding` by subprotocol.
    pub fn encoding(mut self, e: Encoding) -> Self {
        self.encoding = e;
        self.subprotocol = true;
        self
    }

    /// Decodes frames as `encoding` without asking for it (the URL's `?format=` does).
    pub fn format(mut self, e: Encoding) -> Self {
        self.encoding = e;
        self.subprotocol = false;
        self
    }

    /// Fixes the socket receive buffer (see [`Connect::recv_buffer`]).
    pub fn recv_buffer(mut self, bytes: u32) -> Self {
        self.recv_buffer = Some(bytes);
        self
    }
}

/// A connected client.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    encoding: Encoding,
}

impl Client {
    /// Opens a connection; a refused handshake is [`ClientError::Refused`].
    pub async fn connect(c: Connect) -> Result<Client, ClientError> {
        let mut req = c.url.as_str().into_client_request()?;
        for (k, v) in &c.headers {
            let name = tungstenite::http::HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| ClientError::Request(e.to_string()))?;
            req.headers_mut().insert(name, HeaderValue::from_str(v).map_err(|e| ClientError::Request(e.to_string()))?);
        }
        if c.subprotocol {
            req.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static(c.encoding.subprotocol()));
        }
        let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
        let connected = match c.recv_buffer {
            None => tokio_tungstenite::connect_async_with_config(req, Some(config), true).await,
            Some(size) => {
                let stream = plain_stream(&req, size).await?;
                tokio_tungstenite::client_async_with_config(req, MaybeTlsStream::Plain(stream), Some(config)).await
            }
        };
        match connected {
            Ok((ws, _)) => Ok(Client { ws, encoding: c.encoding }),
            Err(tungstenite::Error::Http(resp)) => {
                let status = resp.status().as_u16();
                let body = resp.body().as_ref().and_then(|b| serde_json::from_slice(b).ok()).unwrap_or(Value::Null);
                Err(ClientError::Refused { status, body })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The encoding in use.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// Sends a typed frame in the connection's encoding (canonical shape).
    pub async fn send(&mut self, frame: &ClientFrame) -> Result<(), ClientError> {
        let msg = encode(self.encoding, frame)?;
        self.ws.send(msg).await?;
        Ok(())
    }

    /// Sends JSON text as is (flat frames, malformed input).
    pub async fn send_text(&mut self, text: &str) -> Result<(), ClientError> {
        self.ws.send(Message::Text(text.into())).await?;
        Ok(())
    }

    /// Sends any message as is.
    pub async fn send_raw(&mut self, msg: Message) -> Result<(), ClientError> {
        self.ws.send(msg).await?;
        Ok(())
    }

    /// Receives the next data or close message as is (pings are answered and skipped),
    /// bounded by `d`; for checking the message kind (text or binary) of an encoding.
    pub async fn recv_message(&mut self, d: Duration) -> Result<Message, ClientError> {
        let next = async {
            loop {
                match self.ws.next().await {
                    None => return Err(ClientError::Ws(tungstenite::Error::ConnectionClosed)),
                    Some(Err(e)) => return Err(e.into()),
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                    Some(Ok(m)) => return Ok(m),
                }
            }
        };
        tokio::time::timeout(d, next).await.map_err(|_| ClientError::Timeout(d))?
    }

    /// Receives the next frame or close (pings are answered and skipped).
    pub async fn recv(&mut self) -> Result<Received, ClientError> {
        loop {
            let msg = match self.ws.next().await {
                None => return Ok(Received::Closed(None)),
                Some(Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed)) => {
                    return Ok(Received::Closed(None));
                }
                Some(Err(tungstenite::Error::Protocol(_) | tungstenite::Error::Io(_))) => {
                    return Ok(Received::Closed(None));
                }
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(m)) => m,
            };
            if matches!(msg, Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) {
                continue;
            }
            return self.decode(msg);
        }
    }

    /// Decodes a message received with [`Client::recv_message`] as [`Client::recv`] would.
    pub fn decode(&self, msg: Message) -> Result<Received, ClientError> {
        let json_err = |e: serde_json::Error| ClientError::Decode(e.to_string());
        match msg {
            Message::Text(t) if self.encoding == Encoding::Flat => {
                Ok(Received::Flat(serde_json::from_str(&t).map_err(json_err)?))
            }
            Message::Text(t) => Ok(Received::Frame(serde_json::from_str(&t).map_err(json_err)?)),
            Message::Binary(b) => {
                Ok(Received::Frame(rmp_serde::from_slice(&b).map_err(|e| ClientError::Decode(e.to_string()))?))
            }
            Message::Close(c) => Ok(Received::Closed(c.map(|f| (u16::from(f.code), f.reason.to_string())))),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {
                Err(ClientError::Decode("not a data or close message".into()))
            }
        }
    }

    /// [`Client::recv`] bounded by a timeout.
    pub async fn recv_timeout(&mut self, d: Duration) -> Result<Received, ClientError> {
        tokio::time::timeout(d, self.recv()).await.map_err(|_| ClientError::Timeout(d))?
    }

    /// Receives until `pick` accepts something (skipping the rest), bounded by `d`.
    pub async fn recv_until<T>(
        &mut self,
        d: Duration,
        mut pick: impl FnMut(&Received) -> Option<T>,
    ) -> Result<T, ClientError> {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let r = self.recv_timeout(left).await?;
            if let Some(t) = pick(&r) {
                return Ok(t);
            }
            if matches!(r, Received::Closed(_)) {
                return Err(ClientError::Decode(format!("closed while waiting: {r:?}")));
            }
        }
    }

    /// Waits for the close, skipping frames; returns its code.
    pub async fn closed(&mut self, d: Duration) -> Result<Option<u16>, ClientError> {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if let Received::Closed(c) = self.recv_timeout(left).await? {
                return Ok(c.map(|(code, _)| code));
            }
        }
    }

    /// Sends a close frame and keeps the client, to read the server's reply.
    pub async fn send_close(&mut self, code: u16, reason: &str) -> Result<(), ClientError> {
        let frame = tungstenite::protocol::CloseFrame { code: code.into(), reason: reason.into() };
        self.ws.close(Some(frame)).await?;
        Ok(())
    }

    /// Closes normally.
    pub async fn close(mut self) -> Result<(), ClientError> {
        self.ws.close(None).await?;
        Ok(())
    }

    /// The socket itself, for the SDK's connection task (which reads and writes it in
    /// one `select!` loop instead of through these helpers).
    pub(crate) fn into_socket(self) -> Socket {
        self.ws
    }
}

/// The socket type under [`Client`].
pub(crate) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Encodes a frame as the message `encoding` sends it in (canonical shape for flat).
pub(crate) fn encode(encoding: Encoding, frame: &ClientFrame) -> Result<Message, ClientError> {
    Ok(match encoding {
        Encoding::MsgPack => Message::Binary(rmp_serde_bytes(frame).map_err(ClientError::Decode)?.into()),
        Encoding::Json | Encoding::Flat => {
            Message::Text(serde_json::to_string(frame).map_err(|e| ClientError::Decode(e.to_string()))?.into())
        }
    })
}

/// A plain TCP connection to the request's host with a fixed receive buffer.
async fn plain_stream(
    req: &tungstenite::handshake::client::Request,
    recv_buffer: u32,
) -> Result<TcpStream, ClientError> {
    let uri = req.uri();
    if uri.scheme_str() != Some("ws") {
        return Err(ClientError::Request("recv_buffer needs a ws:// URL".into()));
    }
    let host = uri.host().ok_or_else(|| ClientError::Request("URL has no host".into()))?;
    let port = uri.port_u16().unwrap_or(80);
    let addr = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| ClientError::Ws(e.into()))?
        .next()
        .ok_or_else(|| ClientError::Request(format!("{host} does not resolve")))?;
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() }
        .map_err(|e| ClientError::Ws(e.into()))?;
    socket.set_recv_buffer_size(recv_buffer).map_err(|e| ClientError::Ws(e.into()))?;
    let stream = socket.connect(addr).await.map_err(|e| ClientError::Ws(e.into()))?;
    stream.set_nodelay(true).map_err(|e| ClientError::Ws(e.into()))?;
    Ok(stream)
}

fn rmp_serde_bytes(frame: &ClientFrame) -> Result<Vec<u8>, String> {
    rmp_serde::to_vec_named(frame).map_err(|e| e.to_string())
}
