//! gateway-governance
