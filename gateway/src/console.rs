//! The console at `GET /console`: a page built on the TypeScript client that shows a
//! connection's state and node, a live log of events, presence of a channel, a publish
//! form and the node's `/health`.
//!
//! Its files are compiled from `client-ts/console` and committed under
//! `gateway/assets/console`; `build.rs` embeds them, so every node serves them from its
//! binary and the page fetches nothing from elsewhere. Every answer carries a strict
//! Content-Security-Policy: scripts, styles and fetches from this origin only,
//! WebSockets to this host only, no inline code, no framing.

use std::sync::Arc;

use axum::{
    Router,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, Uri, header},
    response::{IntoResponse, Response},
    routing::get,
};

use crate::node::Node;

mod assets {
    include!(concat!(env!("OUT_DIR"), "/console_assets.rs"));
}

/// The page's `<meta name="gateway-ws-path">` as committed; replaced by the node's first
/// `ws_paths` entry, so the page connects where this node upgrades.
const WS_PATH_META: &str = r#"<meta name="gateway-ws-path" content="/ws">"#;

/// The console's routes: `/console` (also `/console/`) and `/console/<file>`.
pub fn routes() -> Router<Arc<Node>> {
    Router::new().route("/console", get(page)).route("/console/", get(page)).route("/console/{*path}", get(file))
}

/// An embedded file by its path below `/console/`.
pub fn asset(path: &str) -> Option<&'static [u8]> {
    assets::ASSETS.binary_search_by(|(p, _)| (*p).cmp(path)).ok().map(|i| assets::ASSETS[i].1)
}

/// Paths of every embedded file.
pub fn asset_paths() -> impl Iterator<Item = &'static str> {
    assets::ASSETS.iter().map(|(p, _)| *p)
}

async fn page(State(node): State<Arc<Node>>, uri: Uri, headers: HeaderMap) -> Response {
    let html = String::from_utf8_lossy(asset("index.html").unwrap_or_default());
    // `ws_paths` entries are validated to `[A-Za-z0-9._~/-]`: nothing to escape.
    let ws_path = node.cfg.ws_paths.first().map_or("/ws", String::as_str);
    let html = html.replace(WS_PATH_META, &format!(r#"<meta name="gateway-ws-path" content="{ws_path}">"#));
    respond(&uri, &headers, "text/html; charset=utf-8", html.into_bytes().into())
}

async fn file(State(node): State<Arc<Node>>, Path(path): Path<String>, uri: Uri, headers: HeaderMap) -> Response {
    if path == "index.html" {
        return page(State(node), uri, headers).await;
    }
    match asset(&path) {
        Some(bytes) => respond(&uri, &headers, content_type(&path), axum::body::Body::from(bytes)),
        None => crate::http::not_found().await.into_response(),
    }
}

fn respond(uri: &Uri, headers: &HeaderMap, content_type: &'static str, body: axum::body::Body) -> Response {
    let mut res = body.into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&csp(request_host(uri, headers))) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // The files change with the binary: revalidate rather than keep a stale console.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}

/// The host the browser addressed (`Host`, or the authority of an absolute URI), when
/// it is a plain `host[:port]` that may be written into a header.
fn request_host<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).or_else(|| uri.authority().map(|a| a.as_str()));
    host.filter(|h| {
        !h.is_empty()
            && h.len() <= 255
            && h.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
    })
}

/// The page's policy: nothing by default; scripts, styles, images and fetches from this
/// origin; WebSockets to this host (`'self'` covers them in current browsers, the
/// explicit `ws:`/`wss:` origins in older ones).
fn csp(host: Option<&str>) -> String {
    let sockets = host.map(|h| format!(" ws://{h} wss://{h}")).unwrap_or_default();
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'{sockets}; \
         form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    )
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("html") => "text/html; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embeds_the_page_and_its_modules() {
        let html = std::str::from_utf8(asset("index.html").unwrap()).unwrap();
        assert!(html.contains(WS_PATH_META), "the page declares its WebSocket path");
        for linked in ["/console/console.css", "/console/app/main.js"] {
            assert!(html.contains(linked), "{linked}");
            assert!(asset(linked.trim_start_matches("/console/")).is_some(), "{linked} is embedded");
        }
        assert!(!html.contains("<script>") && !html.contains("style="), "no inline code or style (CSP)");
        assert!(asset("nope.js").is_none());
    }

    /// Every relative import of every embedded module names an embedded file, so the
    /// browser never meets a 404 halfway through loading the console.
    #[test]
    fn module_imports_resolve() {
        let mut checked = 0;
        for path in asset_paths().filter(|p| p.ends_with(".js")) {
            let text = std::str::from_utf8(asset(path).unwrap()).unwrap();
            let dir: Vec<&str> = path.split('/').collect::<Vec<_>>()[..path.matches('/').count()].to_vec();
            for spec in text.split(" from \"").skip(1).filter_map(|s| s.split('"').next()) {
                let mut parts = dir.clone();
                for seg in spec.split('/') {
                    match seg {
                        "." => {}
                        ".." => {
                            assert!(parts.pop().is_some(), "{path}: {spec} leaves /console");
                        }
                        s => parts.push(s),
                    }
                }
                let target = parts.join("/");
                assert!(asset(&target).is_some(), "{path} imports {spec} = {target}, which is not embedded");
                checked += 1;
            }
        }
        assert!(checked > 10, "found {checked} imports");
    }

    #[test]
    fn policy_and_hosts() {
        let p = csp(Some("127.0.0.1:8080"));
        assert!(p.starts_with("default-src 'none'; script-src 'self'; style-src 'self';"));
        assert!(p.contains("connect-src 'self' ws://127.0.0.1:8080 wss://127.0.0.1:8080;"));
        assert!(!p.contains("unsafe"));
        assert_eq!(csp(None).matches("connect-src 'self';").count(), 1);
        let uri: Uri = "/console".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("gw.example.com"));
        assert_eq!(request_host(&uri, &h), Some("gw.example.com"));
        h.insert(header::HOST, HeaderValue::from_static("evil.com; script-src *"));
        assert_eq!(request_host(&uri, &h), None);
        h.insert(header::HOST, HeaderValue::from_static("[::1]:80"));
        assert_eq!(request_host(&uri, &h), Some("[::1]:80"));
    }

    #[test]
    fn content_types() {
        assert_eq!(content_type("app/main.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("console.css"), "text/css; charset=utf-8");
        assert_eq!(content_type("x"), "application/octet-stream");
    }
}
