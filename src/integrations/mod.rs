//! Integrations with the wider ecosystem, each behind its own cargo
//! feature, so that the core depends on no metrics facade or framework.

#[cfg(feature = "metrics")]
pub(crate) mod metrics;
#[cfg(feature = "tower")]
pub(crate) mod tower;
