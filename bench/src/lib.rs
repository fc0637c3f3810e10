//! Jitter lab and benchmarks.
