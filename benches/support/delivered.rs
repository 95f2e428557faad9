//! The accept → delivered time of each event a server in this process delivers, exactly, as its
//! `event delivered` debug line tells it (the same figure its `/metrics` histogram counts), with
//! the destination it was delivered to where the server names several.
#![allow(dead_code)] // each bench uses part of it

use std::sync::{Arc, Mutex};
use tracing_subscriber::registry::LookupSpan;

/// One delivered event: its destination (`None` on a server with one) and its time (ms).
pub type Delivered = (Option<String>, u64);

/// The delivered events seen since the last [`DeliveredTimes::take`].
#[derive(Clone, Default)]
pub struct DeliveredTimes(Arc<Mutex<Vec<Delivered>>>);

/// The name of a `destination` span, kept in its extensions.
struct DestinationName(String);

impl DeliveredTimes {
    /// Collects from now on, in this process (the global subscriber: call it once).
    pub fn install() -> DeliveredTimes {
        use tracing_subscriber::layer::SubscriberExt as _;
        use tracing_subscriber::{Layer as _, filter::Targets};
        let times = DeliveredTimes::default();
        // The workers' debug lines, and the span naming their destination (created by the fleet).
        let only = Targets::new()
            .with_target("zdmap::serve::workers", tracing::Level::DEBUG)
            .with_target("zdmap::serve::fleet", tracing::Level::INFO);
        let subscriber = tracing_subscriber::registry().with(times.clone().with_filter(only));
        let _ = tracing::subscriber::set_global_default(subscriber);
        times
    }

    /// The times (ms) collected since the last call, whatever their destination.
    pub fn take(&self) -> Vec<u64> {
        self.take_each().into_iter().map(|(_, ms)| ms).collect()
    }

    /// The events collected since the last call, with their destinations.
    pub fn take_each(&self) -> Vec<Delivered> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl<S> tracing_subscriber::Layer<S> for DeliveredTimes
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if attrs.metadata().name() != "destination" {
            return;
        }
        struct Name(Option<String>);
        impl tracing::field::Visit for Name {
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                if field.name() == "name" {
                    self.0 = Some(value.to_owned());
                }
            }
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "name" {
                    self.0 = Some(format!("{value:?}"));
                }
            }
        }
        let mut name = Name(None);
        attrs.record(&mut name);
        if let (Some(name), Some(span)) = (name.0, ctx.span(id)) {
            span.extensions_mut().insert(DestinationName(name));
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: tracing_subscriber::layer::Context<'_, S>) {
        struct LatencyMs(Option<u64>);
        impl tracing::field::Visit for LatencyMs {
            fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
                if field.name() == "latency_ms" {
                    self.0 = Some(value);
                }
            }
            fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
        }
        let mut latency = LatencyMs(None);
        event.record(&mut latency);
        let Some(ms) = latency.0 else { return };
        let destination = ctx.event_scope(event).and_then(|scope| {
            scope
                .into_iter()
                .find_map(|span| Some(span.extensions().get::<DestinationName>()?.0.clone()))
        });
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((destination, ms));
    }
}

/// Quantile `p` of sorted `times` (nearest rank).
pub fn rank(times: &[u64], p: f64) -> u64 {
    let i = ((times.len() as f64 * p).ceil() as usize).clamp(1, times.len().max(1)) - 1;
    times.get(i).copied().unwrap_or(0)
}
