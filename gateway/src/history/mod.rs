//! Channel history (contract §9): the last events of every channel in a namespace that
//! keeps history, with offsets that grow along a channel and an epoch naming the store
//! incarnation that issued them.
//!
//! [`History`] is what a node reads: a replay after a position (recovery, gap filling)
//! or the latest events (`history.get`). Who writes depends on the store:
//! [`memory::MemoryHistory`], the embedded twin, stamps and keeps events as the
//! in-process bus delivers them; with NATS, JetStream stores every event published on a
//! history subject (a backend's plain publish included) and the bus reads the offsets
//! from the re-published copies.

pub mod jetstream;
pub mod memory;

use async_trait::async_trait;
use gateway_protocol::{Channel, EventFrame, StreamPosition};

use crate::config::HistoryConfig;

/// Why history could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    /// The channel's namespace keeps no history.
    #[error("channel {0} keeps no history")]
    NotKept(Channel),
    /// The store is unreachable or failed.
    #[error("history store unavailable: {0}")]
    Unavailable(String),
}

/// Where a read starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadFrom {
    /// The events after this position, oldest first.
    After(StreamPosition),
    /// The latest events.
    Latest,
}

/// What a read found.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// The events, oldest first, with `offset` and `epoch` set.
    pub events: Vec<EventFrame>,
    /// The channel's latest offset in the store (0: none stored).
    pub last: u64,
    /// The store's epoch now.
    pub epoch: String,
    /// For [`ReadFrom::After`]: the store still holds every event after the position (same
    /// epoch, window not exceeded). Always true for [`ReadFrom::Latest`].
    pub reaches: bool,
    /// False when `limit` cut the page short.
    pub complete: bool,
}

/// A channel history store.
#[async_trait]
pub trait History: Send + Sync + 'static {
    /// Reads up to `limit` events of `ch`.
    async fn read(&self, ch: &Channel, from: ReadFrom, limit: usize) -> Result<Page, HistoryError>;
    /// Periodic upkeep (expiry, epoch checks); called every few seconds.
    async fn maintain(&self) {}
}

/// The history policy of a node: which channels keep history and how much.
#[derive(Debug, Clone)]
pub struct Keeping(HistoryConfig);

impl Keeping {
    /// The policy of a configuration.
    pub fn new(cfg: &HistoryConfig) -> Self {
        Keeping(cfg.clone())
    }

    /// Whether `ch` keeps history.
    pub fn keeps(&self, ch: &Channel) -> bool {
        self.0.keeps(ch.namespace())
    }

    /// How many events `ch` keeps (0: none).
    pub fn size(&self, ch: &Channel) -> usize {
        usize::try_from(self.0.of(ch.namespace()).size).unwrap_or(usize::MAX)
    }

    /// How long `ch` keeps an event, in ms.
    pub fn ttl_ms(&self, ch: &Channel) -> u64 {
        self.0.of(ch.namespace()).ttl_ms
    }
}
