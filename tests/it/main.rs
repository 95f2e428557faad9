//! The integration tests, in one binary, linked once rather than once per file: a module per
//! area, the helpers they share in `support`.

mod support;

mod batching;
mod chaos;
mod cli;
mod deliver_cases;
mod deliver_e2e;
mod deliver_transport;
mod effectively_once;
mod emulator;
mod fields;
mod fuzz_inputs;
mod hardening;
mod mapping_cases;
mod nats;
mod oas_oracle;
mod oauth;
mod scheduler;
mod schemas;
mod serve;
mod validate;
