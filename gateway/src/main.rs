//! The `gateway` binary: parses the command line and hands over to the library.

use std::{io::Write, time::Duration};

use anyhow::{Context, bail};
use clap::Parser;
use gateway::{
    auth::{TokenSpec, mint_channel_token, mint_user_token},
    bus::DisconnectCommand,
    cli::{ApikeyAction, Cli, Command},
    config::Config,
    keys::RedisKeyStore,
    telemetry,
};
use gateway_protocol::PrincipalKind;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut cfg = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Serve { dev } => serve(cfg, dev).await,
        Command::Token(t) => {
            if cfg.jwt_secret.is_empty() {
                bail!("GATEWAY_JWT_SECRET (or jwt_secret in the config file) is needed to sign tokens");
            }
            let token = match &t.channel {
                Some(ch) => mint_channel_token(&cfg.jwt_secret, ch, Some(&t.sub), t.ttl)?,
                None => {
                    let aud = (!cfg.auth.jwt_audience.is_empty()).then(|| cfg.auth.jwt_audience.clone());
                    let iss = (!cfg.auth.jwt_issuer.is_empty()).then(|| cfg.auth.jwt_issuer.clone());
                    let spec = TokenSpec { sub: t.sub, projects: t.projects, roles: t.roles, ttl: t.ttl, aud, iss };
                    mint_user_token(&cfg.jwt_secret, &spec)?
                }
            };
            writeln!(std::io::stdout(), "{token}")?;
            Ok(())
        }
        Command::Publish(p) => publish(&cfg, p).await,
        Command::Apikey { action } => {
            cfg.validate()?;
            apikey(&cfg, action).await
        }
    }
}

async fn serve(mut cfg: Config, dev: bool) -> anyhow::Result<()> {
    telemetry::init_logging(cfg.log_format);
    if dev {
        use rand::RngExt;
        let mut rng = rand::rng();
        let mut secret = || (0..32).map(|_| format!("{:02x}", rng.random::<u8>())).collect::<String>();
        if cfg.jwt_secret.is_empty() {
            cfg.jwt_secret = secret();
        }
        if cfg.admin_key.is_empty() {
            cfg.admin_key = secret();
        }
        if std::env::var_os("GATEWAY_LISTEN").is_none() {
            cfg.listen = ([127, 0, 0, 1], cfg.listen.port()).into();
        }
    } else if cfg.jwt_secret.is_empty() && cfg.jwt_public_key.is_none() && cfg.api_keys.is_empty() && !cfg.clustered() {
        tracing::warn!("no JWT secret, public key or API keys configured: nobody can authenticate (try --dev)");
    }
    let listener = bind(cfg.listen).with_context(|| format!("bind {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    if dev {
        let spec = TokenSpec {
            sub: "dev-user".into(),
            projects: vec!["*".into()],
            roles: vec![],
            ttl: Duration::from_secs(24 * 3600),
            ..TokenSpec::default()
        };
        let token = mint_user_token(&cfg.jwt_secret, &spec)?;
        let mut out = std::io::stdout();
        writeln!(out, "gateway --dev on http://{addr}")?;
        writeln!(out, "  console:   http://{addr}/console?token={token}")?;
        writeln!(out, "  token:     {token}")?;
        writeln!(out, "  websocket: ws://{addr}/ws?token={token}")?;
        writeln!(
            out,
            "  publish:   curl -X POST http://{addr}/api/publish -H 'Authorization: Bearer {}' \\",
            cfg.admin_key
        )?;
        writeln!(
            out,
            "               -d '{{\"channel\":\"user:dev-user\",\"event\":\"hello\",\"data\":{{\"text\":\"hi\"}}}}'"
        )?;
    }
    gateway::run(listener, cfg, shutdown_signal()).await?;
    Ok(())
}

/// Accept-queue length asked of the kernel (capped by `net.core.somaxconn`). The default
/// of 1024 overflows when thousands of clients connect at once; the dropped SYNs are
/// retried only after 1 s, which shows as a 1 s handshake tail.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds the listening socket with `SO_REUSEADDR` (a restarted node rebinds at once) and
/// a deep accept queue.
fn bind(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Resolves on the first SIGTERM or SIGINT; a second one exits at once.
async fn shutdown_signal() {
    wait_signal().await;
    tracing::info!("shutdown signal: draining (send again to exit at once)");
    tokio::spawn(async {
        wait_signal().await;
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });
}

async fn wait_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn publish(cfg: &Config, p: gateway::cli::PublishArgs) -> anyhow::Result<()> {
    let data: serde_json::Value = serde_json::from_str(&p.data).context("--data must be JSON")?;
    if cfg.admin_key.is_empty() {
        bail!("GATEWAY_ADMIN_KEY is needed to publish");
    }
    let body = serde_json::json!({ "channel": p.channel, "event": p.event, "data": data });
    let url = format!("{}/api/publish", p.url.trim_end_matches('/'));
    let resp = reqwest::Client::new().post(&url).bearer_auth(&cfg.admin_key).json(&body).send().await?;
    let status = resp.status();
    let text = resp.text().await?;
    if !status.is_success() {
        bail!("{status}: {text}");
    }
    writeln!(std::io::stdout(), "{text}")?;
    Ok(())
}

async fn apikey(cfg: &Config, action: ApikeyAction) -> anyhow::Result<()> {
    if !cfg.redis_configured() {
        bail!("API keys live in Redis: set GATEWAY_REDIS_URL or redis_sentinel (and GATEWAY_NATS_URL)");
    }
    let store = RedisKeyStore::connect(cfg).await?;
    match action {
        ApikeyAction::Create { agent, projects, scopes } => {
            let key = store.create(&agent, &projects, &scopes).await?;
            writeln!(std::io::stdout(), "{key}")?;
        }
        ApikeyAction::Revoke { key } => {
            let Some(agent) = store.revoke(&key).await? else { bail!("no such key") };
            let nats =
                async_nats::connect(cfg.nats_servers()).await.context("connect to NATS to disconnect the agent")?;
            let cmd = DisconnectCommand { kind: PrincipalKind::Agent, id: agent.clone(), reason: "revoked".into() };
            let subject = format!("{}.ctl.disconnect", cfg.subject_prefix);
            nats.publish(subject, serde_json::to_vec(&cmd)?.into()).await?;
            nats.flush().await?;
            writeln!(std::io::stdout(), "revoked key of agent {agent}; its connections are being closed")?;
        }
    }
    Ok(())
}
