//! zdmap: a Zendesk destination for customer-data pipelines.
//!
//! `src/` is grouped by stage; a stage imports only the stages below it (ARCHITECTURE.md draws
//! them, and `stages.rs` checks it):
//!
//! ```text
//! commands ─▶ serve ─▶ queue ─▶ deliver ─▶ mapping ─▶ base
//!                                   └────▶ emulator ─┘
//! ```
//!
//! - [`base`]: UTC timestamps, locks that outlive a panic, outside text made safe to show.
//! - [`mapping`]: the mapping engine: events, triggers, JSONPaths, templates, fields, the
//!   compiled actions, loading `mappings/`, and planning what an event does.
//! - [`emulator`]: a stateful in-memory Zendesk for tests and local work.
//! - [`deliver`]: sending plans to Zendesk: the scheduler by key, the executor, retries,
//!   request budget, lookups, bulk requests, credentials and OAuth, dead letters.
//! - [`queue`]: the durable queue behind `zdmap serve`: SQLite in a data directory, or NATS
//!   JetStream shared by replicas.
//! - [`serve`]: the ingest server (Segment's HTTP tracking API), its workers and health.
//! - [`commands`]: the command line, one function per command; `main.rs` calls [`commands::main`].
//!
//! Compile a mappings directory and see what an event would do:
//!
//! ```
//! use zdmap::mapping::config::Config;
//! use zdmap::mapping::event::Event;
//!
//! let mappings = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings");
//! let config = Config::load(&mappings, &["subdomain=acme".to_string()])
//!     .expect("the shipped mappings load");
//! let event = Event::from_value(serde_json::json!({
//!     "type": "identify",
//!     "userId": "u1",
//!     "traits": {"email": "ada@example.com", "name": "Ada"}
//! }))
//! .expect("a Segment event");
//! let preview = config.preview(&event);
//! let json = preview.to_json(0);
//! assert_eq!(json["matched"][0], "upsert_user");
//! assert_eq!(json["requests"][0]["path"], "/api/v2/users/create_or_update");
//! ```

pub mod base;
pub mod commands;
pub mod deliver;
pub mod emulator;
pub mod mapping;
pub mod queue;
pub mod serve;

#[cfg(test)]
mod stages;
