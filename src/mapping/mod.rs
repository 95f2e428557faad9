//! The mapping engine: from a Segment event and the YAML of `mappings/` to the requests an
//! event's actions would send. Nothing here sends anything or knows Zendesk; `mappings/` does.
//!
//! Bottom to top:
//! - [`yaml`], [`diagnostic`]: YAML trees that keep each node's line and column, and problems
//!   reported at their place.
//! - [`spec`], [`schema`]: the shapes of the config files and their JSON Schemas.
//! - [`event`]: reading and checking Segment-spec events; [`request`]: a rendered request.
//! - [`trigger`]: the trigger language (Segment's subscription syntax).
//! - [`path`]: compiled JSONPath with a fast path for plain paths.
//! - [`template`]: minijinja templates and expressions over event data.
//! - [`field`]: field mappings: paths, templates, literals and combinators.
//! - [`plan`]: the compiled actions (steps, resolvers, outcomes, bulk forms) and what planning
//!   an event gives.
//! - [`config`]: loading a mappings directory into all of the above, with every problem
//!   located, and planning events with it.
//! - [`cases`]: mapping test cases (`zdmap test`); [`defaults`]: the default mappings embedded
//!   in the binary (`zdmap init`).

pub mod cases;
pub mod config;
pub mod defaults;
pub mod diagnostic;
pub mod event;
pub mod field;
pub mod path;
pub mod plan;
pub mod request;
pub mod schema;
pub mod spec;
pub mod template;
pub mod trigger;
pub mod yaml;
