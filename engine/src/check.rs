//! Kernel feature probes behind `crust check`.
