//! `ws_paths` (contract §12): the HTTP paths that accept the WebSocket upgrade.

/// Paths the node serves itself; a WebSocket path may not shadow them.
const TAKEN: [&str; 4] = ["/health", "/ready", "/metrics", "/console"];
/// Prefixes the node serves itself.
const TAKEN_PREFIXES: [&str; 3] = ["/api/", "/socket.io", "/console/"];
/// Longest accepted path.
const MAX_LEN: usize = 128;

/// The default: only `/ws`.
pub fn default_ws_paths() -> Vec<String> {
    vec!["/ws".into()]
}

/// Why `paths` cannot be routed, if it cannot: empty list, a path not starting with `/`,
/// characters outside `[A-Za-z0-9._~/-]` (no route parameters, wildcards, queries),
/// `//` or `..`, longer than 128, a duplicate, or one of the node's own endpoints.
pub fn check(paths: &[String]) -> Result<(), String> {
    if paths.is_empty() {
        return Err("must list at least one path".into());
    }
    for (i, p) in paths.iter().enumerate() {
        let bad = !p.starts_with('/')
            || p.len() > MAX_LEN
            || p.contains("//")
            || p.contains("..")
            || !p.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.' | b'~'));
        if bad {
            return Err(format!("{p:?} must be an absolute path of [A-Za-z0-9._~/-], at most {MAX_LEN} characters"));
        }
        if TAKEN.contains(&p.as_str()) || TAKEN_PREFIXES.iter().any(|t| p.starts_with(t)) {
            return Err(format!("{p:?} is one of the node's own endpoints"));
        }
        if paths[..i].contains(p) {
            return Err(format!("{p:?} is listed twice"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn accepted_and_refused() {
        assert!(check(&default_ws_paths()).is_ok());
        assert!(check(&paths(&["/", "/ws", "/v1/socket", "/a.b~c_d-e/"])).is_ok());
        for bad in [
            &[][..],
            &["ws"],
            &["/ws?x=1"],
            &["/{id}"],
            &["/*rest"],
            &["/a//b"],
            &["/../x"],
            &["/health"],
            &["/console"],
            &["/console/x"],
            &["/api/publish"],
            &["/socket.io/"],
            &["/ws", "/ws"],
            &["/sp ace"],
        ] {
            assert!(check(&paths(bad)).is_err(), "{bad:?}");
        }
        assert!(check(&paths(&[&format!("/{}", "a".repeat(MAX_LEN))])).is_err());
    }
}
