//! gateway-telemetry
