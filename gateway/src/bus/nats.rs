//! NATS implementation of the bus (in progress).
