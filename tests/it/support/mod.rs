//! What the tests share: servers and processes to run, the OpenAPI oracle, and the ways to talk
//! to a running `zdmap serve` and wait on it.

pub mod browser;
pub mod chart;
pub mod command;
pub mod fleet;
pub mod http;
pub mod mappings;
pub mod nats;
pub mod oas;
pub mod serving;
pub mod state;
pub mod wait;
