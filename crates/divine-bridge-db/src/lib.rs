//! Postgres persistence for the Divine ATProto bridge: schema, embedded migrations, the durable job queue and the
//! account/key/session/record stores.
//!
//! Design choice: synchronous Diesel over an r2d2 pool, called from async code through [`Db::run`] (which uses
//! `tokio::task::spawn_blocking`). libpq is mature, the queue's hot statements are single round trips, and a
//! blocking-pool hop costs microseconds next to a Postgres commit; diesel-async would add a second driver stack
//! without a measurable gain for this workload. This crate owns SQL and nothing else: no HTTP, no crypto, no
//! protocol knowledge.

pub mod accounts;
pub mod audit;
pub mod class;
pub mod error;
pub mod migrate;
pub mod queue;
pub mod records;
pub mod schema;
pub mod states;
#[cfg(feature = "testutil")]
pub mod testutil;

pub use class::{Classified, ErrorClass};
pub use error::DbError;
pub use states::{JobKind, JobState, ProvisioningState, RecordState};

use diesel::pg::PgConnection;
use diesel::r2d2::{ConnectionManager, Pool, PooledConnection};
use std::time::Duration;

/// A pooled connection.
pub type Conn = PooledConnection<ConnectionManager<PgConnection>>;

/// Handle to the database: a connection pool. Cheap to clone.
#[derive(Clone)]
pub struct Db {
    pool: Pool<ConnectionManager<PgConnection>>,
}

impl Db {
    /// Connects a pool of at most `max_size` connections. Fails fast (10 s) if Postgres is unreachable.
    pub fn connect(url: &str, max_size: u32) -> Result<Db, DbError> {
        let manager = ConnectionManager::<PgConnection>::new(url);
        let pool = Pool::builder()
            .max_size(max_size)
            .min_idle(Some(1))
            .connection_timeout(Duration::from_secs(10))
            .test_on_check_out(false)
            .build(manager)
            .map_err(|e| DbError::Pool(e.to_string()))?;
        Ok(Db { pool })
    }

    /// A connection for synchronous callers (CLI, tests). Async code uses [`Db::run`].
    pub fn conn(&self) -> Result<Conn, DbError> {
        self.pool.get().map_err(|e| DbError::Pool(e.to_string()))
    }

    /// Runs `f` with a pooled connection on the blocking thread pool.
    pub async fn run<T, F>(&self, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&mut PgConnection) -> Result<T, DbError> + Send + 'static,
    {
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = pool.get().map_err(|e| DbError::Pool(e.to_string()))?;
            f(&mut conn)
        })
        .await
        .map_err(|e| DbError::Join(e.to_string()))?
    }

    /// Pool statistics for `/ready` and diagnostics.
    pub fn pool_state(&self) -> (u32, u32) {
        let s = self.pool.state();
        (s.connections, s.idle_connections)
    }
}
