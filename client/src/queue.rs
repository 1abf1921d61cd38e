//! The bounded offline queue: `send`/`publish` (and requests) made while disconnected
//! wait here, never more than `capacity`, and are flushed in call order after the
//! re-subscribe on the next connection. When full, [`OverflowPolicy::DropOldest`]
//! evicts the oldest entry (its caller gets [`QueueError::Evicted`]) and
//! [`OverflowPolicy::Error`] refuses the new one ([`QueueError::Full`]).

use std::collections::VecDeque;

/// Why a message never left the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// Policy `Error`: the queue was full when the message was offered.
    #[error("offline queue is full ({0} messages)")]
    Full(usize),
    /// Policy `DropOldest`: a newer message pushed this one out of the full queue.
    #[error("dropped from the full offline queue ({0} messages)")]
    Evicted(usize),
}

/// What a full queue does with one more message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OverflowPolicy {
    /// Evict the oldest message (seed 000's agents prefer fresh status over stale).
    #[default]
    DropOldest,
    /// Refuse the new message; the caller decides.
    Error,
}

/// A FIFO bounded by `capacity`.
#[derive(Debug)]
pub struct OfflineQueue<T> {
    /// The messages, oldest first.
    items: VecDeque<T>,
    /// Most messages held; at least 1.
    capacity: usize,
    /// What a full queue does.
    policy: OverflowPolicy,
}

impl<T> OfflineQueue<T> {
    /// An empty queue; a capacity of 0 is raised to 1.
    pub fn new(capacity: usize, policy: OverflowPolicy) -> Self {
        let capacity = capacity.max(1);
        OfflineQueue { items: VecDeque::with_capacity(capacity.min(64)), capacity, policy }
    }

    /// Adds `item` under the policy. `Ok(Some(evicted))` hands back the message pushed
    /// out (to fail its caller); `Err((item, Full))` refuses the new one.
    pub fn push(&mut self, item: T) -> Result<Option<T>, (T, QueueError)> {
        let mut evicted = None;
        if self.items.len() >= self.capacity {
            match self.policy {
                OverflowPolicy::Error => return Err((item, QueueError::Full(self.capacity))),
                OverflowPolicy::DropOldest => evicted = self.items.pop_front(),
            }
        }
        self.items.push_back(item);
        Ok(evicted)
    }

    /// The oldest message, removed.
    pub fn pop(&mut self) -> Option<T> {
        self.items.pop_front()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Messages waiting.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Every message, oldest first, removed (to fail them on close).
    pub fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.items.drain(..)
    }

    /// Drops the messages `keep` refuses (callers that gave up waiting).
    pub fn retain(&mut self, keep: impl FnMut(&T) -> bool) {
        self.items.retain(keep);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_oldest_keeps_the_newest_in_order() {
        let mut q = OfflineQueue::new(3, OverflowPolicy::DropOldest);
        for i in 0..3 {
            assert_eq!(q.push(i), Ok(None));
        }
        assert_eq!(q.push(3), Ok(Some(0)));
        assert_eq!(q.push(4), Ok(Some(1)));
        assert_eq!(q.len(), 3);
        assert_eq!(q.drain().collect::<Vec<_>>(), [2, 3, 4]);
        assert!(q.is_empty());
    }

    #[test]
    fn error_policy_refuses_the_new_one() {
        let mut q = OfflineQueue::new(2, OverflowPolicy::Error);
        assert_eq!(q.push("a"), Ok(None));
        assert_eq!(q.push("b"), Ok(None));
        assert_eq!(q.push("c"), Err(("c", QueueError::Full(2))));
        assert_eq!(q.pop(), Some("a"));
        assert_eq!(q.push("c"), Ok(None));
        assert_eq!(q.drain().collect::<Vec<_>>(), ["b", "c"]);
    }

    #[test]
    fn never_unbounded() {
        let mut q = OfflineQueue::new(0, OverflowPolicy::DropOldest);
        for i in 0..1000 {
            let _ = q.push(i);
        }
        assert_eq!(q.len(), 1);
        q.retain(|_| false);
        assert!(q.is_empty());
    }
}
