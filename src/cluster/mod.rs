//! Inter-blade link.
