//! A minimal Redis client for the harness: one command per connection, the reply parsed
//! from RESP2. Enough to steer sentinels (`SENTINEL …`) and read keys behind the
//! gateway's back (counts, presence) without going through the client under test.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context, bail};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
};

/// How long one command may take, connect included.
const LIMIT: Duration = Duration::from_secs(3);

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`, or a bulk string.
    Text(String),
    /// `:n`.
    Int(i64),
    /// `-ERR …`.
    Error(String),
    /// `*n …`.
    Array(Vec<Reply>),
    /// `$-1` or `*-1`.
    Nil,
}

impl Reply {
    /// The text of a string reply.
    pub fn text(&self) -> Option<&str> {
        match self {
            Reply::Text(s) => Some(s),
            _ => None,
        }
    }

    /// The integer of an integer reply (or of a string that holds one).
    pub fn int(&self) -> Option<i64> {
        match self {
            Reply::Int(n) => Some(*n),
            Reply::Text(s) => s.parse().ok(),
            _ => None,
        }
    }

    /// The items of an array reply; empty for anything else.
    pub fn items(&self) -> &[Reply] {
        match self {
            Reply::Array(v) => v,
            _ => &[],
        }
    }

    /// A flat `[k, v, k, v…]` array reply (`SENTINEL master`) looked up by key.
    pub fn field(&self, key: &str) -> Option<&Reply> {
        self.items().chunks_exact(2).find(|kv| kv[0].text() == Some(key)).map(|kv| &kv[1])
    }
}

/// Sends one command to the server on `127.0.0.1:port` and reads its reply, bounded.
pub async fn command(port: u16, args: &[&str]) -> anyhow::Result<Reply> {
    tokio::time::timeout(LIMIT, async {
        let mut s = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).await?;
        let mut out = format!("*{}\r\n", args.len());
        for a in args {
            out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(out.as_bytes()).await?;
        read(&mut BufReader::new(s)).await
    })
    .await
    .with_context(|| format!("redis {args:?} on port {port}: no reply within {LIMIT:?}"))?
}

/// Reads one reply (recursively for arrays).
async fn read(r: &mut BufReader<TcpStream>) -> anyhow::Result<Reply> {
    let mut line = String::new();
    if r.read_line(&mut line).await? == 0 {
        bail!("connection closed");
    }
    let line = line.trim_end_matches(['\r', '\n']);
    let (kind, rest) = line.split_at(1.min(line.len()));
    Ok(match kind {
        "+" => Reply::Text(rest.to_owned()),
        "-" => Reply::Error(rest.to_owned()),
        ":" => Reply::Int(rest.parse()?),
        "$" => {
            let n: i64 = rest.parse()?;
            if n < 0 {
                return Ok(Reply::Nil);
            }
            let mut buf = vec![0u8; usize::try_from(n)? + 2];
            r.read_exact(&mut buf).await?;
            buf.truncate(buf.len() - 2);
            Reply::Text(String::from_utf8(buf)?)
        }
        "*" => {
            let n: i64 = rest.parse()?;
            if n < 0 {
                return Ok(Reply::Nil);
            }
            let mut items = Vec::with_capacity(usize::try_from(n)?);
            for _ in 0..n {
                items.push(Box::pin(read(r)).await?);
            }
            Reply::Array(items)
        }
        other => bail!("unexpected reply type {other:?}"),
    })
}
