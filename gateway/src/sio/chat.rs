//! The data of the Socket.IO events the gateway answers itself, checked into types
//! (seed 004's rules for chat messages), with every refusal as one `validation_error`
//! listing each offending field.

use gateway_protocol::{Channel, Namespace, iso8601};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Longest chat message content, in characters.
pub const MAX_CONTENT_CHARS: usize = 2000;
/// Most attachments on one message.
pub const MAX_ATTACHMENTS: usize = 5;
/// Largest attachment size a message may announce (10 MiB).
pub const MAX_ATTACHMENT_BYTES: u64 = 10 * 1024 * 1024;
/// Most event names one `subscribe_to_events` may list.
pub const MAX_FILTER_EVENTS: usize = 64;

/// One offending field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// The field's path, e.g. `attachments[2].size`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// Data that failed validation: the `validation_error` payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Invalid {
    /// A summary.
    pub message: String,
    /// Each offending field.
    pub details: Vec<FieldError>,
}

impl Invalid {
    fn one(message: &str, field: &str, why: &str) -> Self {
        Invalid { message: message.into(), details: vec![FieldError { field: field.into(), message: why.into() }] }
    }
}

/// A message's kind as the client sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageType {
    /// A command for the backends (also forwarded upstream).
    Command,
    /// Plain chat.
    Message,
    /// A reply in a thread.
    ThreadReply,
}

/// A checked `send_message`.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatMessage {
    /// The text.
    pub content: String,
    /// Its kind.
    pub kind: MessageType,
    /// The thread it belongs to.
    pub thread_id: Option<String>,
    /// Attachment descriptions, passed on as sent.
    pub attachments: Option<Vec<Value>>,
}

impl ChatMessage {
    /// Checks `send_message` data.
    pub fn parse(data: &Value) -> Result<Self, Invalid> {
        const WHAT: &str = "invalid message format";
        let Some(obj) = data.as_object() else {
            return Err(Invalid::one(WHAT, "", "must be an object"));
        };
        let mut details = Vec::new();
        let mut bad = |field: String, message: &str| details.push(FieldError { field, message: message.into() });
        let content = match obj.get("content") {
            Some(Value::String(s)) if s.is_empty() => {
                // Seed 004 validates with Joi's `string()`, which refuses "".
                bad("content".into(), "must not be empty");
                None
            }
            Some(Value::String(s)) if s.chars().count() <= MAX_CONTENT_CHARS => Some(s.clone()),
            Some(Value::String(_)) => {
                bad("content".into(), "must be at most 2000 characters");
                None
            }
            Some(_) => {
                bad("content".into(), "must be a string");
                None
            }
            None => {
                bad("content".into(), "is required");
                None
            }
        };
        let kind = match obj.get("type") {
            Some(v) => match serde_json::from_value::<MessageType>(v.clone()) {
                Ok(k) => Some(k),
                Err(_) => {
                    bad("type".into(), "must be one of command, message, thread_reply");
                    None
                }
            },
            None => {
                bad("type".into(), "is required");
                None
            }
        };
        let thread_id = match obj.get("thread_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if uuid::Uuid::parse_str(s).is_ok() => Some(s.clone()),
            Some(_) => {
                bad("thread_id".into(), "must be a UUID");
                None
            }
        };
        let attachments = match obj.get("attachments") {
            None | Some(Value::Null) => None,
            Some(Value::Array(list)) => {
                if list.len() > MAX_ATTACHMENTS {
                    bad("attachments".into(), "at most 5 attachments");
                }
                for (i, a) in list.iter().enumerate().take(MAX_ATTACHMENTS + 1) {
                    for field in ["name", "type"] {
                        if !a.get(field).is_some_and(Value::is_string) {
                            bad(format!("attachments[{i}].{field}"), "is a required string");
                        }
                    }
                    match a.get("size").and_then(Value::as_u64) {
                        Some(n) if n <= MAX_ATTACHMENT_BYTES => {}
                        Some(_) => bad(format!("attachments[{i}].size"), "must be at most 10485760"),
                        None => bad(format!("attachments[{i}].size"), "is a required non-negative number"),
                    }
                }
                Some(list.clone())
            }
            Some(_) => {
                bad("attachments".into(), "must be an array");
                None
            }
        };
        match (content, kind) {
            (Some(content), Some(kind)) if details.is_empty() => {
                Ok(ChatMessage { content, kind, thread_id, attachments })
            }
            _ => Err(Invalid { message: WHAT.into(), details }),
        }
    }

    /// The `message_received` payload.
    pub fn received(&self, message_id: &str, project: &str, user_id: &str, ts_ms: u64) -> Value {
        let mut v = json!({
            "message_id": message_id,
            "project_name": project,
            "user_id": user_id,
            "content": self.content,
            "type": self.kind,
            "timestamp": iso8601(ts_ms),
        });
        if let Some(t) = &self.thread_id {
            v["thread_id"] = json!(t);
        }
        if let Some(a) = &self.attachments {
            v["attachments"] = json!(a);
        }
        v
    }
}

/// The project channel named by `{project_name}` data.
pub fn project_of(data: &Value) -> Result<Channel, Invalid> {
    const WHAT: &str = "invalid project";
    match data.get("project_name") {
        Some(Value::String(s)) => {
            Channel::new(Namespace::Project, s).map_err(|e| Invalid::one(WHAT, "project_name", &e.to_string()))
        }
        Some(_) => Err(Invalid::one(WHAT, "project_name", "must be a string")),
        None => Err(Invalid::one(WHAT, "project_name", "is required")),
    }
}

/// A checked `subscribe_to_events`: (project id or every channel, event names).
pub fn event_filter(data: &Value) -> Result<(Option<String>, Vec<String>), Invalid> {
    const WHAT: &str = "invalid subscription";
    let events = match data.get("events") {
        Some(Value::Array(list)) if list.len() <= MAX_FILTER_EVENTS => {
            let names: Option<Vec<String>> =
                list.iter().map(|v| v.as_str().filter(|s| !s.is_empty() && s.len() <= 128).map(String::from)).collect();
            names.ok_or_else(|| Invalid::one(WHAT, "events", "must be non-empty strings of at most 128 bytes"))?
        }
        Some(Value::Array(_)) => return Err(Invalid::one(WHAT, "events", "at most 64 names")),
        _ => return Err(Invalid::one(WHAT, "events", "is a required array of event names")),
    };
    let project = match data.get("project_name") {
        None | Some(Value::Null) => None,
        Some(_) => Some(project_of(data)?.id().to_owned()),
    };
    Ok((project, events))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_message() {
        let m = ChatMessage::parse(&json!({"content": "/sprint start", "type": "command"})).unwrap();
        assert_eq!(m.kind, MessageType::Command);
        let v = m.received("m1", "p", "u1", 0);
        assert_eq!(v["type"], "command");
        assert_eq!(v["timestamp"], "1970-01-01T00:00:00.000Z");
        assert!(v.get("thread_id").is_none());
    }

    #[test]
    fn every_bad_field_is_listed() {
        let e = ChatMessage::parse(&json!({
            "content": "x".repeat(2001), "type": "shout", "thread_id": "nope",
            "attachments": [{"name": "a", "type": "t", "size": 10_485_761u64}, {"size": -1}],
        }))
        .unwrap_err();
        let fields: Vec<&str> = e.details.iter().map(|d| d.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "content",
                "type",
                "thread_id",
                "attachments[0].size",
                "attachments[1].name",
                "attachments[1].type",
                "attachments[1].size"
            ]
        );
        assert!(ChatMessage::parse(&json!("hi")).is_err());
        assert!(ChatMessage::parse(&json!({"type": "message"})).is_err());
        assert!(ChatMessage::parse(&json!({"content": "", "type": "message"})).is_err());
        let six = vec![json!({"name": "a", "type": "t", "size": 1}); 6];
        assert!(ChatMessage::parse(&json!({"content": "x", "type": "message", "attachments": six})).is_err());
    }

    #[test]
    fn projects_and_filters() {
        assert_eq!(project_of(&json!({"project_name": "p1"})).unwrap().as_str(), "project:p1");
        assert!(project_of(&json!({"project_name": "a b"})).is_err());
        assert!(project_of(&json!({})).is_err());
        assert_eq!(
            event_filter(&json!({"events": ["a"], "project_name": "p"})).unwrap(),
            (Some("p".into()), vec!["a".into()])
        );
        assert!(event_filter(&json!({"events": [1]})).is_err());
        assert!(event_filter(&json!({"events": vec!["a"; 65]})).is_err());
    }
}
