//! The `history.get` request (contract §9): its parameters and its answer. A page is
//! how a client loads a channel's recent events on start and fills a gap it saw.

use serde::{Deserialize, Serialize};

use crate::frame::{EventFrame, StreamPosition};

/// The request method that reads a channel's history.
pub const HISTORY_GET: &str = "history.get";

/// Parameters of `history.get`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryQuery {
    /// The channel, e.g. `session:abc`.
    pub channel: String,
    /// Read the events after this position; without it, the latest ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<StreamPosition>,
    /// At most this many events (the server caps it at the channel's history size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// The answer to `history.get`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryPage {
    /// The channel.
    pub channel: String,
    /// The events, oldest first, as `event` frames (with `"type":"event"`).
    #[serde(with = "as_event_frames")]
    pub events: Vec<EventFrame>,
    /// The channel's latest offset in the store (0 when it holds none).
    pub offset: u64,
    /// The store's epoch.
    pub epoch: String,
    /// False when more events follow (`limit` reached) or the store no longer reaches
    /// back to `since`.
    pub complete: bool,
}

/// Events (de)serialised as whole `event` frames, tag included, so a page's entries are
/// byte for byte what the live feed delivers.
mod as_event_frames {
    use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Error};

    use crate::frame::{EventFrame, ServerFrame};

    pub fn serialize<S: Serializer>(events: &[EventFrame], s: S) -> Result<S::Ok, S::Error> {
        let frames: Vec<ServerFrame> = events.iter().cloned().map(ServerFrame::Event).collect();
        frames.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<EventFrame>, D::Error> {
        Vec::<ServerFrame>::deserialize(d)?
            .into_iter()
            .map(|f| match f {
                ServerFrame::Event(e) => Ok(e),
                other => Err(D::Error::custom(format!("expected an event frame, got {}", other.kind()))),
            })
            .collect()
    }
}
