//! Registrar: REGISTER handling and digest authentication (SPEC §5).

pub mod digest;
