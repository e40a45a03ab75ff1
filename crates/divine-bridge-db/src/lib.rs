//! Postgres persistence for the Divine ATProto bridge: schema, embedded migrations, the durable job queue and the
//! account/key/session/record stores. Placeholder: filled in by the foundation work.

pub mod class;
pub use class::{Classified, ErrorClass};
