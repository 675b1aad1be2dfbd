//! Permission guards: the [`RequirePermission`] extractor and the [`RequirePermissionLayer`].

use std::marker::PhantomData;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Response};
use futures::future::{BoxFuture, FutureExt};
use http::Request;
use http::request::Parts;
use tower_layer::Layer;
use tower_service::Service;

use crate::error::{AuthError, Forbidden};
use crate::layer::rbac_of;
use crate::principal::Principal;

/// A permission known at compile time, for [`RequirePermission`]. Declare one with
/// [`permission!`](crate::permission).
pub trait Permission: Send + Sync + 'static {
    /// The permission string, e.g. `write:project`.
    const NAME: &'static str;
}

/// Declares a [`Permission`] type.
///
/// ```
/// arq_auth::permission!(pub WriteProject = "write:project");
/// use arq_auth::Permission;
/// assert_eq!(WriteProject::NAME, "write:project");
/// ```
#[macro_export]
macro_rules! permission {
    ($vis:vis $name:ident = $perm:literal) => {
        #[doc = concat!("The `", $perm, "` permission.")]
        #[derive(Debug, Clone, Copy)]
        $vis struct $name;
        impl $crate::Permission for $name {
            const NAME: &'static str = $perm;
        }
    };
}

/// Why a guarded request was refused: no valid credentials (401) or not allowed (403, or 401
/// with a step-up challenge when MFA is missing).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GuardRejection {
    /// Not authenticated.
    #[error(transparent)]
    Unauthenticated(#[from] AuthError),
    /// Authenticated but not allowed.
    #[error(transparent)]
    Forbidden(#[from] Forbidden),
}

impl IntoResponse for GuardRejection {
    fn into_response(self) -> Response {
        match self {
            Self::Unauthenticated(e) => e.into_response(),
            Self::Forbidden(e) => e.into_response(),
        }
    }
}

/// An extractor that admits the request only if the principal holds `P` (and shows MFA when
/// `P` needs it). Yields the principal.
///
/// # Example
/// ```
/// use arq_auth::{RequirePermission, permission};
/// use axum::{Router, routing::post};
///
/// permission!(WriteProject = "write:project");
///
/// async fn create(RequirePermission(who, ..): RequirePermission<WriteProject>) -> String {
///     format!("created by {}", who.subject())
/// }
/// let app: Router = Router::new().route("/projects", post(create));
/// ```
#[derive(Debug, Clone)]
pub struct RequirePermission<P: Permission>(pub Principal, pub PhantomData<P>);

impl<S: Send + Sync, P: Permission> FromRequestParts<S> for RequirePermission<P> {
    type Rejection = GuardRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let principal = parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or(AuthError::MissingCredentials)?;
        rbac_of(&parts.extensions).check(&principal, P::NAME)?;
        Ok(Self(principal, PhantomData))
    }
}

/// A route layer requiring a permission given at run time.
///
/// ```
/// use arq_auth::RequirePermissionLayer;
/// use axum::{Router, routing::delete};
///
/// let app: Router = Router::new()
///     .route("/workspace", delete(|| async { "gone" }))
///     .route_layer(RequirePermissionLayer::new("admin:workspace"));
/// ```
#[derive(Debug, Clone)]
pub struct RequirePermissionLayer {
    permission: std::sync::Arc<str>,
}

impl RequirePermissionLayer {
    /// Requires `permission`.
    pub fn new(permission: impl Into<std::sync::Arc<str>>) -> Self {
        Self {
            permission: permission.into(),
        }
    }
}

impl<S> Layer<S> for RequirePermissionLayer {
    type Service = RequirePermissionService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequirePermissionService {
            inner,
            permission: self.permission.clone(),
        }
    }
}

/// The service [`RequirePermissionLayer`] produces.
#[derive(Debug, Clone)]
pub struct RequirePermissionService<S> {
    inner: S,
    permission: std::sync::Arc<str>,
}

impl<S> Service<Request<Body>> for RequirePermissionService<S>
where
    S: Service<Request<Body>, Response = Response> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let decision = match request.extensions().get::<Principal>() {
            None => Err(GuardRejection::from(AuthError::MissingCredentials)),
            Some(principal) => rbac_of(request.extensions())
                .check(principal, &self.permission)
                .map_err(GuardRejection::from),
        };
        match decision {
            Ok(()) => self.inner.call(request).boxed(),
            Err(rejection) => futures::future::ready(Ok(rejection.into_response())).boxed(),
        }
    }
}
