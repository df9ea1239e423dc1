//! gateway-providers: one adapter per upstream wire format, behind gateway-core's `Provider` trait.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]
