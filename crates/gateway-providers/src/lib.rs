//! gateway-providers
