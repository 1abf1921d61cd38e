//! The fuzz targets' seed corpus (`fuzz/seeds/<target>/`), generated from the golden
//! frames above so the seeds follow the wire format (Socket.IO's from the packets of
//! the portal session in docs/protocol.md). The test fails when the committed
//! seeds are stale; `UPDATE_FUZZ_SEEDS=1 cargo test -p gateway-protocol --test golden
//! fuzz_seeds` rewrites them.

use std::{collections::BTreeMap, path::PathBuf};

use gateway_protocol::{ClientFrame, ClientTimestamp, Encoding, Namespace, ServerFrame, SystemEvent};
use serde_json::{Map, Value, json};

/// Target → file name → bytes.
type Seeds = BTreeMap<&'static str, BTreeMap<String, Vec<u8>>>;

fn seeds() -> Seeds {
    let mut s = Seeds::new();
    let mut add = |target: &'static str, name: String, bytes: Vec<u8>| {
        s.entry(target).or_default().insert(name, bytes);
    };
    let clients = super::client_frames();
    let mut channels = vec!["session:abc".to_owned(), "gw.ev.session.abc".to_owned()];
    let mut events: Vec<String> = SystemEvent::ALL.iter().map(|e| e.as_str().to_owned()).collect();
    for (i, (frame, json)) in clients.iter().enumerate() {
        let name = format!("{i:02}-{}", frame.kind());
        add("json", name.clone(), json.as_bytes().to_vec());
        add("msgpack", name.clone(), rmp_serde::to_vec_named(frame).expect("packs"));
        if let Some(flat) = flat_client(frame) {
            add("flat", name.clone(), flat.into_bytes());
        }
        if let ClientFrame::Publish { channel, .. } = frame {
            channels.push(channel.clone());
        }
        if let ClientFrame::Publish { event, .. } | ClientFrame::Send { event, .. } = frame {
            events.push(event.to_string());
        }
        if let ClientFrame::Authenticate { token } | ClientFrame::Refresh { token, .. } = frame {
            add(
                "flat",
                format!("{name}-payload"),
                json!({"type":"authenticate","payload":{"token":token}}).to_string().into_bytes(),
            );
        }
    }
    // Server frames in the flat shape are what flat clients echo back most often.
    for (i, (frame, _, flat)) in super::server_frames().iter().enumerate() {
        add("flat", format!("server-{i:02}-{}", frame.kind()), flat.as_bytes().to_vec());
        if let ServerFrame::Event(e) = frame {
            events.push(e.event.to_string());
        }
    }
    for ns in Namespace::ALL {
        channels.push(format!("{ns}:a-b_C9"));
    }
    for (i, c) in channels.iter().enumerate() {
        add("channel", format!("{i:02}"), c.clone().into_bytes());
    }
    events.sort();
    events.dedup();
    for (i, e) in events.iter().enumerate() {
        add("event_name", format!("{i:02}"), e.clone().into_bytes());
    }
    // Handshakes: flags (all three headers), Authorization, X-API-Key, the
    // Sec-WebSocket-Protocol values, the query.
    for (i, e) in Encoding::ALL.iter().enumerate() {
        let h = format!(
            "\x07Bearer {jwt}\nkey-aaaaaaaa\nx, {}\rgateway.v1.json\ntoken=t&apiKey=k&format={}&subscribe=session:abc,%20user:u1",
            e.subprotocol(),
            e.as_str(),
            jwt = token(),
        );
        add("handshake", format!("{i:02}-{}", e.as_str()), h.into_bytes());
    }
    add("handshake", "03-query".into(), b"\x00\n\n\ntoken=a%2Eb%2Ec&format=json".to_vec());
    // Socket.IO (docs/protocol.md, Socket.IO): packets as one WebSocket frame each, one
    // long-polling body, and event data for the validators (mode 1).
    for (i, packet) in SOCKETIO.iter().enumerate() {
        add("socketio", format!("{i:02}"), format!("\x00{packet}").into_bytes());
    }
    add("socketio", "polling".into(), format!("\x00{}", SOCKETIO[..4].join("\x1e")).into_bytes());
    add("socketio", "data-message".into(), format!("\x01{SEND_MESSAGE}").into_bytes());
    add(
        "socketio",
        "data-filter".into(),
        format!("\x01{}", r#"{"events":["state_change"],"project_name":"p1"}"#).into_bytes(),
    );
    // JWTs: one as received (mode 0), one header and claims to sign (mode 1).
    add("jwt", "00-token".into(), format!("\x00{}", token()).into_bytes());
    add("jwt", "01-sign".into(), format!("\x01{}\n{}", JWT_HEADER, JWT_CLAIMS).into_bytes());
    s
}

/// A chat message with every optional field.
const SEND_MESSAGE: &str = r#"{"content":"/sprint start","type":"command","thread_id":"0192f0c1-0000-7000-8000-000000000000","attachments":[{"name":"a.txt","type":"text/plain","size":3}]}"#;

/// Engine.IO packets carrying the Socket.IO packets of the portal's session.
const SOCKETIO: [&str; 14] = [
    r#"40/portal,{"token":"t"}"#,
    r#"42/portal,["join_project",{"project_name":"my-project"}]"#,
    r#"42/portal,1["leave_project",{"project_name":"my-project"}]"#,
    "3",
    r#"42/portal,["subscribe_to_events",{"events":["state_change"],"project_name":"my-project"}]"#,
    r#"42/chat/my-project,12["send_message",{"content":"hi","type":"message"}]"#,
    r#"42/chat/my-project,["typing_start"]"#,
    r#"42/monitoring,["authenticate",{"apiKey":"key-aaaaaaaa"}]"#,
    r#"43/portal,7[{"ok":true}]"#,
    r#"41/admin,"#,
    r#"451-/x,["e",{"_placeholder":true,"num":0}]"#,
    "2probe",
    "5",
    "6",
];

const JWT_HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;
const JWT_CLAIMS: &str = r#"{"sub":"u1","exp":4102444800,"projects":["p1"],"roles":["admin"]}"#;

/// A JWT's shape with a made-up signature.
fn token() -> String {
    format!("{}.{}.c2ln", base64url(JWT_HEADER.as_bytes()), base64url(JWT_CLAIMS.as_bytes()))
}

/// Unpadded base64url (RFC 4648 §5).
fn base64url(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(ABC[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// A client frame in the flat shape, when the flat shape can carry it.
fn flat_client(frame: &ClientFrame) -> Option<String> {
    let mut m = Map::new();
    match frame {
        ClientFrame::Ping => {
            m.insert("type".into(), json!("ping"));
        }
        ClientFrame::Authenticate { token } => {
            m.insert("type".into(), json!("authenticate"));
            m.insert("token".into(), json!(token));
        }
        ClientFrame::Send { id, event, data, correlation_id, timestamp } => {
            m.insert("type".into(), json!(event.as_str()));
            m.insert("payload".into(), data.clone());
            id.as_ref().map(|id| m.insert("messageId".into(), json!(id)));
            correlation_id.as_ref().map(|c| m.insert("correlationId".into(), json!(c)));
            match timestamp {
                Some(ClientTimestamp::Millis(ms)) => m.insert("timestamp".into(), json!(ms)),
                Some(ClientTimestamp::Text(t)) => m.insert("timestamp".into(), json!(t)),
                None => None,
            };
        }
        _ => return None,
    }
    Some(Value::Object(m).to_string())
}

#[test]
fn fuzz_seeds_are_current() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
    let update = std::env::var_os("UPDATE_FUZZ_SEEDS").is_some();
    for (target, files) in seeds() {
        let dir = root.join(target);
        if update {
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create the seed directory");
        }
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .map(|d| d.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
            .unwrap_or_default();
        on_disk.sort();
        for (name, bytes) in &files {
            let path = dir.join(name);
            if update {
                std::fs::write(&path, bytes).expect("write a seed");
            } else {
                let got = std::fs::read(&path).unwrap_or_default();
                assert!(&got == bytes, "{} is stale: UPDATE_FUZZ_SEEDS=1 regenerates the seeds", path.display());
            }
        }
        if !update {
            assert_eq!(on_disk, files.keys().cloned().collect::<Vec<_>>(), "seed files of {target}");
        }
    }
    assert_eq!(base64url(b"any carnal pleas"), "YW55IGNhcm5hbCBwbGVhcw");
}
