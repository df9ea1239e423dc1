//! gateway-server
