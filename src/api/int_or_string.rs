//! serde for Kubernetes' IntOrString fields (targetPort, maxSurge, ...): kept as strings, read
//! from a number or a string, written as a number when the string is one.

use serde::{Deserialize, Deserializer, Serializer};

pub fn serialize<S: Serializer>(value: &str, s: S) -> Result<S::Ok, S::Error> {
    match value.parse::<i64>() {
        Ok(n) if n.to_string() == value => s.serialize_i64(n),
        _ => s.serialize_str(value),
    }
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Int(i64),
        Str(String),
        Null(()),
    }
    Ok(match Either::deserialize(d)? {
        Either::Int(n) => n.to_string(),
        Either::Str(s) => s,
        Either::Null(()) => String::new(),
    })
}
