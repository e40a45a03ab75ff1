//! Hot fixed statements as prepared statements, planned once per connection.
//!
//! Diesel's `sql_query` marks every statement "unsafe to cache", so Postgres parses and plans it on every call. For
//! the lease that was most of its cost: ~10 ms of planning (a CTE, a window, a lateral per class) for under 1 ms of
//! execution, measured under load (issue 11 §3, `queue_noop_jobs_per_sec`). [`Prepared`] carries the same SQL text —
//! the `pub const …_SQL` strings stay the one copy, readable and usable for `EXPLAIN` — with `$n` placeholders, and
//! lets diesel's statement cache keep one prepared statement per connection keyed by that text. Postgres then plans
//! it as its plan cache decides (the lease forces a generic plan, see `queue::LEASE_SETTINGS`).
//!
//! Placeholders are `$1`…`$9`, each may occur several times (its value is bound once per occurrence); no other `$`
//! may occur in the text (no dollar quoting). Both are checked when the statement is built into SQL: a statement
//! that breaks them fails with a query-builder error, never silently.

use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::{Array, BigInt, Double, Int2, Int4, Text, Untyped};
use diesel::{PgConnection, QueryResult, RunQueryDsl};

/// One bound value of a [`Prepared`] statement (the SQL types the queue's statements use).
#[derive(Debug, Clone, Copy)]
pub enum Param<'a> {
    Text(&'a str),
    BigInt(i64),
    Double(f64),
    SmallInts(&'a [i16]),
    Ints(&'a [i32]),
    BigInts(&'a [i64]),
}

/// A fixed SQL text with `$n` placeholders and their values; see the module docs.
#[derive(Debug, Clone)]
pub struct Prepared<'a> {
    sql: &'static str,
    params: Vec<Param<'a>>,
}

impl<'a> Prepared<'a> {
    /// `params[n - 1]` is the value of `$n`.
    pub fn new(sql: &'static str, params: Vec<Param<'a>>) -> Prepared<'a> {
        Prepared { sql, params }
    }
}

fn builder_error(msg: String) -> diesel::result::Error {
    diesel::result::Error::QueryBuilderError(msg.into())
}

impl QueryFragment<Pg> for Prepared<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        let mut rest = self.sql;
        while let Some(pos) = rest.find('$') {
            out.push_sql(&rest[..pos]);
            let digits = rest[pos + 1..].bytes().take_while(u8::is_ascii_digit).count();
            let n: usize = rest[pos + 1..pos + 1 + digits]
                .parse()
                .map_err(|_| builder_error(format!("a `$` without a placeholder number in: {}", self.sql)))?;
            let param = n
                .checked_sub(1)
                .and_then(|i| self.params.get(i))
                .ok_or_else(|| builder_error(format!("${n} has no value ({} given)", self.params.len())))?;
            match param {
                Param::Text(v) => out.push_bind_param::<Text, _>(v)?,
                Param::BigInt(v) => out.push_bind_param::<BigInt, _>(v)?,
                Param::Double(v) => out.push_bind_param::<Double, _>(v)?,
                Param::SmallInts(v) => out.push_bind_param::<Array<Int2>, _>(v)?,
                Param::Ints(v) => out.push_bind_param::<Array<Int4>, _>(v)?,
                Param::BigInts(v) => out.push_bind_param::<Array<BigInt>, _>(v)?,
            }
            rest = &rest[pos + 1 + digits..];
        }
        out.push_sql(rest);
        Ok(())
    }
}

// Not a static query id: diesel keys its statement cache by the SQL text (the same for every call of one statement)
// and the bind types, and caches it because nothing here calls `unsafe_to_cache_prepared`.
impl QueryId for Prepared<'_> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl Query for Prepared<'_> {
    type SqlType = Untyped;
}

impl RunQueryDsl<PgConnection> for Prepared<'_> {}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::query_builder::QueryBuilder;

    fn sql_of(p: &Prepared<'_>) -> QueryResult<String> {
        let mut qb = diesel::pg::PgQueryBuilder::default();
        p.to_sql(&mut qb, &Pg)?;
        Ok(qb.finish())
    }

    #[test]
    fn placeholders_are_bound_in_order_and_repeats_get_their_own_bind() {
        let p = Prepared::new(
            "SELECT $2, $1 WHERE x = $2 LIMIT $3",
            vec![Param::Text("a"), Param::BigInt(2), Param::Double(1.5)],
        );
        assert_eq!(sql_of(&p).unwrap(), "SELECT $1, $2 WHERE x = $3 LIMIT $4");
    }

    #[test]
    fn a_missing_value_or_a_stray_dollar_is_an_error_not_a_guess() {
        let missing = Prepared::new("SELECT $1, $2", vec![Param::BigInt(1)]);
        assert!(sql_of(&missing).unwrap_err().to_string().contains("$2 has no value"));
        let stray = Prepared::new("SELECT $$x$$", vec![]);
        assert!(sql_of(&stray)
            .unwrap_err()
            .to_string()
            .contains("without a placeholder number"));
        let zero = Prepared::new("SELECT $0", vec![Param::BigInt(1)]);
        assert!(sql_of(&zero).is_err());
    }
}
