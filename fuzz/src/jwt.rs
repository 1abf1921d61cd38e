//! JWTs as the gateway reads them: the shape test that tells a JWT from an API key,
//! the header parsed before verification (`jsonwebtoken::decode_header`: its `alg`, and
//! the `kid` a JWKS set-up picks its key by), and verification with the validation the
//! gateway's `Authenticator` builds for a configured secret or public key (mirrored
//! here, as that type lives in the server crate; each key admits exactly one algorithm).
//!
//! Input: byte 0 even — the rest is a token as received. Byte 0 odd — the rest is a
//! header and claims (split at the first `\n`) that are base64url-encoded and signed
//! HS256, once with the gateway secret and once with the bytes of an RSA public key
//! (the algorithm-confusion attack), so the fuzzer gets past the signature.
//!
//! Properties: nothing panics; an unsigned or badly signed token never verifies; a
//! token verifies only when its header names the configured algorithm, and then carries
//! `exp` in the future (within the leeway) and a `sub`; an HMAC made with the public
//! key never verifies against that key.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use gateway_protocol::handshake::looks_like_jwt;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Validation, decode, decode_header};
use serde::Deserialize;
use std::sync::LazyLock;

/// The HS256 secret of the fuzzed gateway.
const SECRET: &[u8] = b"fuzz-secret-fuzz-secret";

/// A throwaway RSA public key: the gateway's `jwt_public_key` in the RS256 set-up.
const RSA_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAuW4P/BDjRwK2zdYWOP29
RrOsg3feYRi8iZvstF0Q4zm3MNGb4zSalEpqe7WWJfnx492zGEEJC4JIo8VNK6Ix
u68LJP9ipXlKVEe+IKKjWtC7DYOkxhJJc5alKzb4iZLFnfOTaBi0Zv5M/7Db38gg
WqcOC/6BVzJJZ2CrbF5yov0AELKRKLVKb/ED4zQg3k3q7WXf3gNqdM+vYeMZ5Ves
+wlR5GSPvYA9wEJKvb18VinJBbFwgo2SCiKTaJ3Tth437J7luQrArlAcYZo23CoZ
7HS9OeCEOdJrVKPJhKmUU6zQ9oyl664NzPX8jN7DicunbDka33UTqyh8pkFTMfDZ
bQIDAQAB
-----END PUBLIC KEY-----
";

/// Leeway on `exp`/`nbf`, in seconds (the gateway's default `auth.leeway_secs`).
const LEEWAY: u64 = 0;

/// The user claims the gateway reads once a token is verified (`auth::VerifiedClaims`).
#[derive(Deserialize)]
struct VerifiedClaims {
    sub: String,
    exp: u64,
    #[serde(default)]
    #[expect(dead_code, reason = "read only to check it decodes as the gateway's claims do")]
    projects: Vec<String>,
    #[serde(default)]
    #[expect(dead_code, reason = "read only to check it decodes as the gateway's claims do")]
    roles: Vec<String>,
    #[serde(default)]
    #[expect(dead_code, reason = "read only to check it decodes as the gateway's claims do")]
    channel: Option<serde::de::IgnoredAny>,
}

/// The keys and validations of both set-ups, built once (parsing the PEM per input
/// would dominate the run).
struct Keys {
    hs: DecodingKey,
    hs_validation: Validation,
    rsa: DecodingKey,
    rsa_validation: Validation,
}

static KEYS: LazyLock<Keys> = LazyLock::new(|| Keys {
    hs: DecodingKey::from_secret(SECRET),
    hs_validation: validation(Algorithm::HS256),
    rsa: DecodingKey::from_rsa_pem(RSA_PUBLIC_PEM.as_bytes()).expect("the embedded key is valid"),
    rsa_validation: validation(Algorithm::RS256),
});

/// The user-token validation of `Authenticator::new` for `alg`, without audience or
/// issuer checks (the default configuration).
fn validation(alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = LEEWAY;
    v.validate_nbf = true;
    v.validate_aud = false;
    v.set_required_spec_claims(&["exp", "sub"]);
    v
}

/// Runs one token (or one header and claims to sign) through the gateway's checks.
pub fn check(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let keys = &*KEYS;
    if mode & 1 == 0 {
        // A token as received: it can carry no valid signature, so it never verifies.
        if let Ok(token) = std::str::from_utf8(rest) {
            let _ = looks_like_jwt(token);
        }
        let _ = decode_header(rest);
        assert!(decode::<VerifiedClaims>(rest, &keys.hs, &keys.hs_validation).is_err(), "forged token");
        return;
    }
    let (header, claims) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &b""[..]),
    };
    let message = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims));

    let token = signed(&message, SECRET);
    assert_eq!(looks_like_jwt(&token), !header.is_empty() && !claims.is_empty(), "{token}");
    let parsed_header = decode_header(&token);
    if let Ok(data) = decode::<VerifiedClaims>(&token, &keys.hs, &keys.hs_validation) {
        assert_eq!(data.header.alg, Algorithm::HS256);
        assert_eq!(parsed_header.as_ref().map(|h| h.alg).ok(), Some(Algorithm::HS256));
        // Read after the check, so a few seconds of slack for a slow run.
        let now = jsonwebtoken::get_current_timestamp();
        assert!(data.claims.exp.saturating_add(LEEWAY + 5) >= now, "expired token accepted: exp {}", data.claims.exp);
        let _ = data.claims.sub;
    }
    // Tampering with the signed token (a flipped claims byte) breaks the signature.
    if !claims.is_empty() {
        let mut tampered = claims.to_vec();
        tampered[0] ^= 1;
        let forged =
            format!("{}.{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(&tampered), sig(&token));
        assert!(decode::<VerifiedClaims>(&forged, &keys.hs, &keys.hs_validation).is_err(), "tampered token");
    }

    // The RS256 set-up: an HMAC keyed with the public key's bytes must never pass,
    // whatever `alg` the header claims.
    let confused = signed(&message, RSA_PUBLIC_PEM.as_bytes());
    assert!(decode::<VerifiedClaims>(&confused, &keys.rsa, &keys.rsa_validation).is_err(), "algorithm confusion");
}

/// `message` with its HS256 signature under `secret` appended.
fn signed(message: &str, secret: &[u8]) -> String {
    let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &EncodingKey::from_secret(secret), Algorithm::HS256)
        .expect("HMAC signing cannot fail");
    format!("{message}.{sig}")
}

/// The signature segment of a token.
fn sig(token: &str) -> &str {
    token.rsplit('.').next().unwrap_or_default()
}
