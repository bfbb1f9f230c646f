//! The integration tests: one binary, a module per area. Each starts real servers on
//! ephemeral ports and talks real HTTP and WebSocket to them, on SQLite and PostgreSQL
//! (`scenarios!` runs a scenario on both engines), with Redis for the cluster tests.

#[macro_use]
mod common;

mod admin;
mod attachments;
mod attachments_s3;
mod auth;
mod blocks;
mod calls;
mod channels;
mod cli;
mod cluster;
mod consent;
mod content;
mod conversations;
mod database_outage;
mod delivery;
mod devices;
mod directory;
mod envelopes;
mod group_commit;
mod hostile;
mod keys;
mod limits;
mod ops;
mod port;
mod push;
mod push_native;
mod push_receiver;
mod request_ids;
mod secrets;
mod sessions;
mod stories;
mod turn;
mod users;
mod venv;
mod websocket;
