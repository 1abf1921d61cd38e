//! The integration tests, one module per concern, linked into one test binary: each
//! `tests/*.rs` file used to be a binary of its own that linked the whole gateway again,
//! which cost minutes of linking and gigabytes of disk per CI run. nextest still runs
//! every test in its own process, so no state is shared between them.

mod auth;
mod bus_nats;
mod channels;
mod cluster;
mod cluster_faults;
mod drain_lb;
mod hardening_events;
mod hardening_http;
mod history;
mod history_cluster;
mod lifecycle;
mod lifecycle_events;
mod limits;
mod presence_conns;
mod presence_redis;
mod protocol;
mod sdk;
mod seeds;
mod signals;
mod smoke;
mod socketio;
mod ws_paths;
