//! One WebSocket connection: the shared handle the hub reaches it through, the session
//! state machine that interprets frames, and the driver that moves bytes.

pub mod handle;
