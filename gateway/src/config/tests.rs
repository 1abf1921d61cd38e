//! Configuration loading and validation.

use super::*;
use figment::providers::Serialized;

fn with(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let mut fig = Figment::from(Serialized::defaults(Config::default()));
    for (k, v) in pairs {
        fig = fig.merge(Toml::string(&format!("{k} = {v}")));
    }
    Config::from_figment(fig)
}

#[test]
fn defaults_are_valid() {
    let c = with(&[]).unwrap();
    assert_eq!(c.listen.port(), 8080);
    assert_eq!(c.limits.per_agent, 5);
    assert!(!c.clustered());
    assert_eq!((c.http.header_timeout_ms, c.http.idle_timeout_ms), (10_000, 75_000));
    assert_eq!((c.limits.max_pending, c.limits.pending_per_ip), (1024, 64));
}

#[test]
fn ws_paths_and_lifecycle() {
    let c = with(&[]).unwrap();
    assert_eq!(c.ws_paths, vec!["/ws".to_owned()]);
    assert_eq!(c.lifecycle.status_channel().map(|ch| ch.to_string()).as_deref(), Some("broadcast:agents"));
    let c = with(&[("ws_paths", r#"["/ws", "/"]"#), ("lifecycle", r#"{ agent_status_channel = "" }"#)]).unwrap();
    assert_eq!(c.ws_paths, vec!["/ws".to_owned(), "/".to_owned()]);
    assert!(c.lifecycle.status_channel().is_none());
    let c = with(&[("ws_paths", r#""/ws, /""#)]).unwrap();
    assert_eq!(c.ws_paths.len(), 2);
    for bad in [r#"[]"#, r#"["/health"]"#, r#"["ws"]"#, r#"["/{x}"]"#, r#"["/", "/"]"#] {
        let e = with(&[("ws_paths", bad)]).unwrap_err().to_string();
        assert!(e.contains("ws_paths"), "{bad}: {e}");
    }
    let e = with(&[("lifecycle", r#"{ agent_status_channel = "agents" }"#)]).unwrap_err().to_string();
    assert!(e.contains("lifecycle.agent_status_channel"), "{e}");
}

#[test]
fn bad_values_name_their_key() {
    let e = with(&[("nats_url", "\"nats://x\"")]).unwrap_err().to_string();
    assert!(e.contains("nats_url"), "{e}");
    let e = with(&[("api_keys", "\"nocolon\"")]).unwrap_err().to_string();
    assert!(e.contains("api_keys"), "{e}");
    let e = with(&[("listen", "\"nope\"")]).unwrap_err().to_string();
    assert!(e.contains("listen"), "{e}");
    let e = with(&[("limits", "{ per_agent = \"five\" }")]).unwrap_err().to_string();
    assert!(e.contains("per_agent"), "{e}");
    let e = with(&[("http", "{ header_timeout_ms = 0 }")]).unwrap_err().to_string();
    assert!(e.contains("http.header_timeout_ms"), "{e}");
    let e = with(&[("bogus", "1")]).unwrap_err().to_string();
    assert!(e.contains("bogus"), "{e}");
}

#[test]
fn lists_accept_comma_strings() {
    let c = with(&[("api_keys", "\"a1:key-aaaaaaaa, a2:key-bbbbbbbb\"")]).unwrap();
    let keys = c.static_api_keys().unwrap();
    assert_eq!(keys.get("key-aaaaaaaa").map(String::as_str), Some("a1"));
    assert_eq!(keys.len(), 2);
}

#[test]
#[allow(clippy::result_large_err)] // figment::Jail's closure type, not ours
fn env_overrides_file() {
    figment::Jail::expect_with(|jail| {
        jail.create_file("gateway.toml", "listen = \"127.0.0.1:9000\"\n[limits]\nper_agent = 3\n")?;
        jail.set_env("GATEWAY_LIMITS__PER_AGENT", "7");
        jail.set_env("GATEWAY_JWT_SECRET", "12345");
        jail.set_env("GATEWAY_SERVICE_HOST", "10.0.0.1");
        jail.set_env("GATEWAY_CONFIG", "gateway.toml");
        jail.set_env("GATEWAY_HTTP__TRUSTED_PROXIES", "10.0.0.0/8,fd00::/8, 192.168.1.1");
        jail.set_env("GATEWAY_AUTH__JWKS_URL", "https://id.example/.well-known/jwks.json");
        let c = Config::load(Some(std::path::Path::new("gateway.toml"))).map_err(|e| e.to_string())?;
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.limits.per_agent, 7);
        assert_eq!(c.jwt_secret, "12345");
        assert_eq!(c.http.trusted_nets().map(|n| n.len()), Ok(3));
        assert_eq!(c.auth.jwks_url, "https://id.example/.well-known/jwks.json");
        Ok(())
    });
}

#[test]
fn seed_compatibility_keys() {
    let c = with(&[]).unwrap();
    assert!(!c.auth.require_credentials && !c.backend_http.enabled());
    assert!(c.channels.auto_join.user.is_empty() && c.ws_default_format.is_empty());
    assert_eq!(c.default_encoding("/ws"), gateway_protocol::Encoding::Json);
    let c = with(&[
        ("ws_paths", r#"["/ws", "/"]"#),
        ("ws_default_format", r#"{ "/" = "flat" }"#),
        ("auth", "{ require_credentials = true }"),
        ("channels", r#"{ auto_join = { user = ["broadcast:agents"] } }"#),
        ("backend_http", r#"{ url = "http://127.0.0.1:4000", token = "s3cret" }"#),
    ])
    .unwrap();
    assert_eq!(c.default_encoding("/"), gateway_protocol::Encoding::Flat);
    assert_eq!(c.default_encoding("/ws"), gateway_protocol::Encoding::Json);
    assert!(c.auth.require_credentials && c.backend_http.enabled());
    assert_eq!(c.channels.auto_join.user, vec!["broadcast:agents".to_owned()]);
    // The environment's forms: `path=format` pairs and comma lists.
    let c = with(&[("ws_paths", r#""/ws,/""#), ("ws_default_format", r#""/=flat, /ws=msgpack""#)]).unwrap();
    assert_eq!(c.default_encoding("/ws"), gateway_protocol::Encoding::MsgPack);
    let c = with(&[("channels", r#"{ auto_join = { agent = "broadcast:a, broadcast:b" } }"#)]).unwrap();
    assert_eq!(c.channels.auto_join.agent.len(), 2);
    for (key, value, named) in [
        ("ws_default_format", r#"{ "/" = "flat" }"#, "ws_default_format"),
        ("ws_default_format", r#"{ "/ws" = "xml" }"#, "ws_default_format"),
        ("channels", r#"{ auto_join = { user = ["agents"] } }"#, "channels.auto_join"),
        ("backend_http", r#"{ url = "https://b" }"#, "backend_http.url"),
    ] {
        let e = with(&[(key, value)]).unwrap_err().to_string();
        assert!(e.contains(named), "{value}: {e}");
    }
}

#[test]
fn jwks_proxies_and_handshake_rate() {
    let c = with(&[]).unwrap();
    assert_eq!((c.auth.jwks_url.as_str(), c.auth.jwks_refresh_secs, c.auth.jwks_min_refetch_secs), ("", 300, 5));
    assert!(c.http.trusted_proxies.is_empty());
    assert_eq!((c.limits.handshakes_per_ip_per_sec, c.limits.handshakes_per_ip_burst), (50, 100));
    let c = with(&[
        ("auth", r#"{ jwks_url = "https://id.example/.well-known/jwks.json", jwks_refresh_secs = 60 }"#),
        ("http", r#"{ trusted_proxies = "10.0.0.0/8, 192.168.1.1, fd00::/8" }"#),
    ])
    .unwrap();
    assert_eq!(c.http.trusted_nets().unwrap().len(), 3);
    let bad = [
        ("auth", r#"{ jwks_url = "ftp://id.example/jwks" }"#, "auth.jwks_url"),
        ("auth", r#"{ jwks_url = "not a url" }"#, "auth.jwks_url"),
        ("auth", r#"{ jwks_url = "http://id", jwks_min_refetch_secs = 0 }"#, "auth.jwks_min_refetch_secs"),
        (
            "auth",
            r#"{ jwks_url = "http://id", jwks_refresh_secs = 2, jwks_min_refetch_secs = 5 }"#,
            "auth.jwks_refresh_secs",
        ),
        ("http", r#"{ trusted_proxies = ["10.0.0.0/33"] }"#, "http.trusted_proxies"),
        ("http", r#"{ trusted_proxies = ["proxy.internal"] }"#, "http.trusted_proxies"),
        (
            "limits",
            r#"{ handshakes_per_ip_per_sec = 5, handshakes_per_ip_burst = 0 }"#,
            "limits.handshakes_per_ip_burst",
        ),
    ];
    for (key, value, named) in bad {
        let e = with(&[(key, value)]).unwrap_err().to_string();
        assert!(e.contains(named), "{value}: {e}");
    }
    let both = Config {
        jwt_public_key: Some(std::env::temp_dir()),
        auth: AuthConfig { jwks_url: "http://id".into(), ..AuthConfig::default() },
        ..Config::default()
    };
    let e = Config::from_figment(Figment::from(Serialized::defaults(both))).unwrap_err().to_string();
    assert!(e.contains("auth.jwks_url"), "{e}");
}
