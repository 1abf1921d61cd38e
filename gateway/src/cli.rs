//! The command line: `gateway serve [--dev]`, `gateway token`, `gateway publish`,
//! `gateway apikey create|revoke`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// The gateway's command line.
#[derive(Debug, Parser)]
#[command(name = "gateway", version, about = "Horizontally scalable WebSocket gateway")]
pub struct Cli {
    /// A TOML configuration file (layered between built-in defaults and GATEWAY_* variables).
    #[arg(long, global = true, env = "GATEWAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a gateway node.
    Serve {
        /// Development mode: a throwaway JWT secret and admin key, listen on 127.0.0.1,
        /// and print a ready token, the console's URL with it, and a publish command.
        #[arg(long)]
        dev: bool,
    },
    /// Mint a user JWT signed with the configured secret.
    Token(TokenArgs),
    /// Publish an event through a running node's HTTP API.
    Publish(PublishArgs),
    /// Manage agent API keys stored in Redis.
    Apikey {
        /// create or revoke.
        #[command(subcommand)]
        action: ApikeyAction,
    },
}

/// `gateway token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// User id (`sub`).
    #[arg(long)]
    pub sub: String,
    /// Project ids, comma separated (`*` for all).
    #[arg(long, value_delimiter = ',')]
    pub projects: Vec<String>,
    /// Roles, comma separated (`admin` may subscribe anywhere).
    #[arg(long, value_delimiter = ',')]
    pub roles: Vec<String>,
    /// Lifetime, e.g. `30m`, `1h`, `3600s`, `7d`.
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    pub ttl: std::time::Duration,
    /// Instead of a user token, a channel token for this channel (e.g. `session:abc`).
    #[arg(long)]
    pub channel: Option<String>,
}

/// `gateway publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Channel, e.g. `session:abc`.
    #[arg(long)]
    pub channel: String,
    /// Event name.
    #[arg(long)]
    pub event: String,
    /// JSON payload.
    #[arg(long, default_value = "null")]
    pub data: String,
    /// Base URL of a node.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
}

/// `gateway apikey …`.
#[derive(Debug, Subcommand)]
pub enum ApikeyAction {
    /// Create a key for an agent; the key is printed once and stored only as a hash.
    Create {
        /// Agent id.
        #[arg(long)]
        agent: String,
        /// Project ids, comma separated (`*` for all).
        #[arg(long, value_delimiter = ',', default_value = "*")]
        projects: Vec<String>,
        /// Scopes, comma separated.
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
    },
    /// Revoke a key (the key or its hash) and disconnect its agent everywhere.
    Revoke {
        /// The key, or its SHA-256 hex.
        key: String,
    },
}

/// Parses `90s`, `30m`, `1h`, `7d` or plain seconds.
pub fn parse_ttl(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("bad duration unit in {s:?} (use s, m, h, d)")),
    };
    Ok(std::time::Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl() {
        assert_eq!(parse_ttl("90").unwrap().as_secs(), 90);
        assert_eq!(parse_ttl("2h").unwrap().as_secs(), 7200);
        assert!(parse_ttl("1y").is_err());
        assert!(parse_ttl("h").is_err());
    }

    #[test]
    fn parses_commands() {
        let c = Cli::try_parse_from(["gateway", "serve", "--dev"]).unwrap();
        assert!(matches!(c.command, Command::Serve { dev: true }));
        let c = Cli::try_parse_from(["gateway", "token", "--sub", "u1", "--projects", "a,b"]).unwrap();
        let Command::Token(t) = c.command else { panic!() };
        assert_eq!(t.projects, vec!["a", "b"]);
    }
}
