//! Simulation (todo)
