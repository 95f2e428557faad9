//! The integration tests, in one binary, linked once rather than once per file: a module per
//! area, the helpers they share in `support`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test says what it expected

mod support;

mod admin;
mod batching;
mod chaos;
mod cli;
mod clock_skew;
mod console;
mod crash_backlog;
mod deliver_cases;
mod deliver_e2e;
mod deliver_transport;
mod deploy;
mod destinations;
mod effectively_once;
mod emulator;
mod fields;
mod fuzz_inputs;
mod gauges;
mod hardening;
mod ingest_guards;
mod journal;
mod listings;
mod mapping_cases;
mod nats;
mod oas_oracle;
mod oauth;
mod parked;
mod reconfigure;
mod refused;
mod scheduler;
mod schemas;
mod send_destination;
mod serve;
mod serve_config;
mod stopping;
mod unchanged;
mod validate;
