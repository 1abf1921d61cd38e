//! Lenient deserialisers for values that arrive as environment strings.

use serde::{Deserialize, Deserializer};

/// Accepts any scalar as a string: the environment turns `GATEWAY_JWT_SECRET=12345` into
/// a number before serde sees it.
pub(crate) fn lossy_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        S(String),
        I(i64),
        U(u64),
        F(f64),
        B(bool),
    }
    Ok(match Scalar::deserialize(d)? {
        Scalar::S(s) => s,
        Scalar::I(v) => v.to_string(),
        Scalar::U(v) => v.to_string(),
        Scalar::F(v) => v.to_string(),
        Scalar::B(v) => v.to_string(),
    })
}

/// Accepts `"a,b"` (environment) as well as `["a","b"]` (TOML).
pub(crate) fn string_or_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect(),
        OneOrMany::Many(v) => v,
    })
}

/// Accepts `"a,b"` as well as `["a","b"]` and keeps the comma-separated string form, so
/// a key that used to take one URL (`nats_url`) takes a list too.
pub(crate) fn string_or_joined<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => s,
        OneOrMany::Many(v) => v.join(","),
    })
}
