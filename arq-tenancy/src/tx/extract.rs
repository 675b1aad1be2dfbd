//! The axum side of tenant transactions: [`TenantTxLayer`] and the [`TenantTx`] extractor.
//!
//! The extractor begins the transaction; when the handler returns, the transaction goes back to
//! the request's slot and the layer commits it if the response is a success (status < 400) or
//! rolls it back otherwise. A failed commit turns the response into a 500, so a client never
//! sees success for a write that did not happen. A handler may also commit explicitly.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use arq_core::{IntoProblem, Problem, TenantId};
use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Response};
use http::Request;
use http::request::Parts;
use tower_layer::Layer;
use tower_service::Service;

use super::{TenantPool, TenantTx, TxError};

pub(crate) struct Slot {
    pool: TenantPool,
    state: Mutex<State>,
}

enum State {
    Empty,
    Lent,
    Parked(TenantTx),
    Finished,
}

impl Slot {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn park(&self, tx: TenantTx) {
        *self.lock() = State::Parked(tx);
    }

    pub(crate) fn finish(&self) {
        *self.lock() = State::Finished;
    }

    fn take_parked(&self) -> Option<TenantTx> {
        let mut state = self.lock();
        match std::mem::replace(&mut *state, State::Finished) {
            State::Parked(tx) => Some(tx),
            other => {
                *state = other;
                None
            }
        }
    }
}

/// Why the [`TenantTx`] extractor failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TxRejection {
    /// [`TenantTxLayer`] is not installed on the route.
    #[error("TenantTxLayer is not installed on this route")]
    MissingLayer,
    /// No tenant was resolved (the tenant resolution layer is missing).
    #[error(transparent)]
    MissingTenant(#[from] crate::resolve::MissingTenant),
    /// The handler asked for a second transaction while the first is still in use.
    #[error("a TenantTx is already in use in this request; extract it once")]
    AlreadyInUse,
    /// Beginning the transaction failed.
    #[error(transparent)]
    Begin(#[from] TxError),
}

impl IntoProblem for TxRejection {
    fn into_problem(self) -> Problem {
        match self {
            Self::Begin(e) => e.into_problem(),
            other => Problem::internal(&other),
        }
    }
}

impl IntoResponse for TxRejection {
    fn into_response(self) -> Response {
        self.into_problem().into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for TenantTx {
    type Rejection = TxRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let slot = parts
            .extensions
            .get::<Arc<Slot>>()
            .cloned()
            .ok_or(TxRejection::MissingLayer)?;
        let tenant = parts
            .extensions
            .get::<TenantId>()
            .copied()
            .ok_or(crate::resolve::MissingTenant)?;
        {
            let mut state = slot.lock();
            match std::mem::replace(&mut *state, State::Lent) {
                State::Parked(mut tx) => {
                    tx.slot = Some(slot.clone());
                    return Ok(tx);
                }
                State::Empty => {}
                other @ (State::Lent | State::Finished) => {
                    *state = other;
                    return Err(TxRejection::AlreadyInUse);
                }
            }
        }
        match slot.pool.begin(tenant).await {
            Ok(mut tx) => {
                tx.slot = Some(slot.clone());
                Ok(tx)
            }
            Err(e) => {
                *slot.lock() = State::Empty;
                Err(e.into())
            }
        }
    }
}

/// Layer that lets handlers extract a [`TenantTx`] and commits or rolls it back by the response
/// status.
///
/// # Example
/// ```no_run
/// use arq_tenancy::{TenantLayer, TenantPool, TenantTx, TenantTxLayer};
/// use axum::{Router, routing::get};
///
/// async fn count(mut tx: TenantTx) -> Result<String, arq_tenancy::TxError> {
///     let n: i64 = sqlx::query_scalar("select count(*) from tasks").fetch_one(&mut *tx).await?;
///     Ok(n.to_string()) // 200: the layer commits
/// }
///
/// # fn app(pool: TenantPool) -> Router {
/// Router::new()
///     .route("/tasks/count", get(count))
///     .layer(TenantTxLayer::new(pool))
///     .layer(TenantLayer::new()) // runs first: resolves the tenant
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct TenantTxLayer {
    pool: TenantPool,
}

impl TenantTxLayer {
    /// A layer lending transactions from `pool`.
    pub fn new(pool: TenantPool) -> Self {
        Self { pool }
    }
}

impl<S> Layer<S> for TenantTxLayer {
    type Service = TenantTxService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TenantTxService {
            inner,
            pool: self.pool.clone(),
        }
    }
}

/// The service [`TenantTxLayer`] produces.
#[derive(Clone, Debug)]
pub struct TenantTxService<S> {
    inner: S,
    pool: TenantPool,
}

impl<S> TenantTxService<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B> Service<Request<B>> for TenantTxService<S>
where
    S: Service<Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let slot = Arc::new(Slot {
            pool: self.pool.clone(),
            state: Mutex::new(State::Empty),
        });
        request.extensions_mut().insert(slot.clone());
        Box::pin(async move {
            let response = inner.call(request).await?;
            let Some(tx) = slot.take_parked() else {
                return Ok(response);
            };
            if response.status().as_u16() < 400 {
                if let Err(e) = tx.commit().await {
                    return Ok(e.into_problem().into_response());
                }
            } else if let Err(e) = tx.rollback().await {
                tracing::warn!(error = %e, "rollback of a failed request's tenant transaction failed");
            }
            Ok(response)
        })
    }
}
