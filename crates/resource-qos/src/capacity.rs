//! Capacity discovery (filled in below).
