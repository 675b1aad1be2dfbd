/// What the tower [`RetryService`](super::RetryService) needs from a request: whether it
/// may be sent twice, and a copy to send again.
///
/// A request that is not idempotent, or cannot be cloned, is sent once and never retried.
///
/// # Example
/// ```
/// use arq_core::resilience::RetryRequest;
///
/// #[derive(Clone)]
/// struct GetUser(u64);
///
/// impl RetryRequest for GetUser {
///     fn is_idempotent(&self) -> bool { true }
///     fn try_clone(&self) -> Option<Self> { Some(self.clone()) }
/// }
/// assert!(GetUser(1).try_clone().is_some());
/// ```
pub trait RetryRequest: Sized {
    /// Whether sending the request twice has the effect of sending it once.
    fn is_idempotent(&self) -> bool;
    /// A copy to send on the next attempt, or `None` when it cannot be copied.
    fn try_clone(&self) -> Option<Self>;
}

/// Marks an HTTP request as safe to retry even though its method is not idempotent
/// (for example a POST carrying an `Idempotency-Key`): insert it into the request's
/// extensions.
///
/// # Example
/// ```
/// use arq_core::resilience::{Idempotent, RetryRequest};
///
/// let mut req = http::Request::post("/payments").body(String::from("{}")).unwrap();
/// assert!(!req.is_idempotent());
/// req.extensions_mut().insert(Idempotent);
/// assert!(req.is_idempotent());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Idempotent;

/// A request body that may or may not be copyable (streaming bodies are not).
pub trait CloneBody: Sized {
    /// A copy of the body, or `None` when it cannot be copied.
    fn try_clone_body(&self) -> Option<Self>;
}

macro_rules! clone_body {
    ($($t:ty),*) => {$(
        impl CloneBody for $t {
            fn try_clone_body(&self) -> Option<Self> {
                Some(self.clone())
            }
        }
    )*};
}
clone_body!(
    (),
    String,
    Vec<u8>,
    bytes::Bytes,
    &'static str,
    &'static [u8]
);

/// A streaming body cannot be replayed: requests carrying one are never retried.
impl CloneBody for axum::body::Body {
    fn try_clone_body(&self) -> Option<Self> {
        None
    }
}

/// GET, HEAD, OPTIONS, TRACE, PUT and DELETE are idempotent (RFC 9110 §9.2.2); other methods
/// only when the request carries [`Idempotent`].
impl<B: CloneBody> RetryRequest for http::Request<B> {
    fn is_idempotent(&self) -> bool {
        use http::Method;
        matches!(
            *self.method(),
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        ) || self.extensions().get::<Idempotent>().is_some()
    }

    fn try_clone(&self) -> Option<Self> {
        let body = self.body().try_clone_body()?;
        let mut req = http::Request::new(body);
        *req.method_mut() = self.method().clone();
        *req.uri_mut() = self.uri().clone();
        *req.version_mut() = self.version();
        *req.headers_mut() = self.headers().clone();
        *req.extensions_mut() = self.extensions().clone();
        Some(req)
    }
}
