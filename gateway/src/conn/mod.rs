//! One WebSocket connection: the shared handle the hub reaches it through, the session
//! state machine that interprets frames, and the driver that moves bytes.

pub mod admission;
pub mod driver;
pub mod handle;
pub mod ratelimit;
pub mod session;

#[cfg(test)]
mod tests;
