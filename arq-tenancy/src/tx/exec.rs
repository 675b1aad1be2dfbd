//! `&mut TenantTx` as a sqlx executor: every query run through it is timed into
//! `db_query_duration_seconds` under its statement fingerprint and checked against the
//! slow-query threshold.

use std::marker::PhantomData;
use std::time::Instant;

use futures::future::BoxFuture;
use futures::stream::{BoxStream, StreamExt};
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArguments, PgQueryResult, PgRow, PgStatement, PgTypeInfo, Postgres};
use sqlx::{Either, Execute, Executor, SqlStr};

use super::{DbMetrics, TenantTx};

/// A query taken apart to read its SQL text (`Execute::sql` consumes the query) and put back
/// together unchanged, except that it is never a named statement when the pool says so.
struct Observed<'q> {
    sql: SqlStr,
    statement: Option<PgStatement>,
    arguments: Option<Result<Option<PgArguments>, BoxDynError>>,
    persistent: bool,
    _query: PhantomData<&'q ()>,
}

impl<'q> Observed<'q> {
    fn new<E: Execute<'q, Postgres>>(mut query: E, unnamed: bool) -> Self {
        let persistent = query.persistent() && !unnamed;
        let statement = query.statement().cloned();
        let arguments = Some(query.take_arguments());
        Self {
            sql: query.sql(),
            statement,
            arguments,
            persistent,
            _query: PhantomData,
        }
    }
}

impl<'q> Execute<'q, Postgres> for Observed<'q> {
    fn sql(self) -> SqlStr {
        self.sql
    }

    fn statement(&self) -> Option<&PgStatement> {
        self.statement.as_ref()
    }

    fn take_arguments(&mut self) -> Result<Option<PgArguments>, BoxDynError> {
        self.arguments.take().unwrap_or(Ok(None))
    }

    fn persistent(&self) -> bool {
        self.persistent
    }
}

/// Records the query when dropped: when its stream ends or is dropped half-read.
struct Timer {
    metrics: DbMetrics,
    sql: SqlStr,
    started: Instant,
}

impl Drop for Timer {
    fn drop(&mut self) {
        self.metrics
            .observe_query(self.sql.as_str(), self.started.elapsed());
    }
}

impl<'c> Executor<'c> for &'c mut TenantTx {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, Result<Either<PgQueryResult, PgRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let query = Observed::new(query, self.unnamed);
        let timer = Timer {
            metrics: self.metrics.clone(),
            sql: query.sql.clone(),
            started: Instant::now(),
        };
        let conn: &'c mut sqlx::PgConnection = self;
        conn.fetch_many(query)
            .map(move |item| {
                let _ = &timer;
                item
            })
            .boxed()
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, Result<Option<PgRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let query = Observed::new(query, self.unnamed);
        let timer = Timer {
            metrics: self.metrics.clone(),
            sql: query.sql.clone(),
            started: Instant::now(),
        };
        let conn: &'c mut sqlx::PgConnection = self;
        Box::pin(async move {
            let row = conn.fetch_optional(query).await;
            drop(timer);
            row
        })
    }

    fn prepare_with<'e>(
        self,
        sql: SqlStr,
        parameters: &'e [PgTypeInfo],
    ) -> BoxFuture<'e, Result<PgStatement, sqlx::Error>>
    where
        'c: 'e,
    {
        let conn: &'c mut sqlx::PgConnection = self;
        conn.prepare_with(sql, parameters)
    }

    fn describe<'e>(
        self,
        sql: SqlStr,
    ) -> BoxFuture<'e, Result<sqlx::Describe<Postgres>, sqlx::Error>>
    where
        'c: 'e,
    {
        let conn: &'c mut sqlx::PgConnection = self;
        conn.describe(sql)
    }
}
