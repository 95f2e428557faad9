//! zdmap: a Zendesk destination for customer-data pipelines.
//!
//! The modules follow the data flow:
//!
//! ```text
//! events ─▶ event ─▶ trigger ─▶ field (path, template) ─▶ plan ─▶ deliver ─▶ Zendesk / emulator
//!             ▲                                                     ▲
//!             └──── serve (ingest + queue) ─────────────────────────┘
//! ```
//!
//! - [`event`]: reading and checking Segment-spec events.
//! - [`yaml`], [`spec`], [`diagnostic`]: what every stage below `config` shares: located YAML
//!   trees, the shapes of the config files, and located problems.
//! - [`config`]: loading `mappings/` (action files, `destination.yaml`) with located errors.
//! - [`trigger`]: the trigger language (Segment's subscription syntax).
//! - [`path`]: compiled JSONPath with a fast path for plain paths.
//! - [`template`]: minijinja templates and expressions over event data.
//! - [`field`]: field mappings: paths, templates, literals and combinators.
//! - [`plan`]: which actions an event triggers and the requests their steps render.
//! - [`request`]: the rendered HTTP request.
//! - [`deliver`]: sending plans to Zendesk: the scheduler by entity key, retries, request budget,
//!   lookups, dead letters.
//! - [`queue`]: the durable queue behind `zdmap serve`: embedded (SQLite), or shared by replicas
//!   (NATS JetStream).
//! - [`serve`]: the ingest server (Segment's HTTP tracking API).
//! - [`emulator`]: a stateful in-memory Zendesk for tests and local work.
//! - [`time`]: timestamps as zdmap writes them; [`sync`]: locks that outlive a panic;
//!   [`text`]: outside text made safe for a terminal or a log line.
//! - [`cases`]: mapping test cases (`zdmap test`).
//! - [`account_fields`]: the account's custom fields against the keys the mappings send.
//! - [`defaults`]: the default mappings and schemas embedded in the binary (`zdmap init`).
//! - [`commands`]: the CLI commands, as library functions.

pub mod account_fields;
pub mod cases;
pub mod commands;
pub mod config;
pub mod defaults;
pub mod deliver;
pub mod diagnostic;
pub mod emulator;
pub mod event;
pub mod field;
pub mod path;
pub mod plan;
pub mod queue;
pub mod request;
pub mod schema;
pub mod serve;
pub mod spec;
pub mod sync;
pub mod template;
pub mod text;
pub mod time;
pub mod trigger;
pub mod yaml;
