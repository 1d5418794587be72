//! A `tower` layer that runs each request as a managed future.
//!
//! In a service, a handler is not a task of its own: its future is polled
//! by whatever drives the connection (hyper's connection task, under
//! axum). A handler that computes for milliseconds between `.await`s holds
//! that worker, and the connection task gets the blame, if anything does.
//! [`PulseLayer`] wraps each request's response future the way
//! [`PulseExt::pulse`](crate::PulseExt::pulse) does: every poll is
//! measured, the request carries a name (its route, say) into snapshots,
//! events and hooks, and it moves through the tiers like any managed task.
//!
//! Each request is judged on its own, from `Monitor`. Like every future
//! that something else runs, it can reach [`Tier::Yield`] at most (it
//! cannot be moved to another thread): from there its polls give way to
//! other work, and [`checkpoint`](crate::checkpoint) inside the handler
//! yields sooner.

use std::borrow::Cow;
use std::fmt;
use std::panic::Location;
use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

use crate::managed::Managed;
use crate::pulse::Pulse;

/// Names a request for snapshots, events and hooks.
///
/// Implemented by [`Fixed`] (one name for every request) and by any
/// `Fn(&R) -> Cow<'static, str>`, e.g. a closure that reads the route.
pub trait NameRequest<R> {
    /// The name of `request`.
    fn name(&self, request: &R) -> Cow<'static, str>;
}

/// The same name for every request.
#[derive(Clone, Debug)]
pub struct Fixed(Cow<'static, str>);

impl<R> NameRequest<R> for Fixed {
    fn name(&self, _request: &R) -> Cow<'static, str> {
        self.0.clone()
    }
}

impl<R, F> NameRequest<R> for F
where
    F: Fn(&R) -> Cow<'static, str>,
{
    fn name(&self, request: &R) -> Cow<'static, str> {
        self(request)
    }
}

/// A [`Layer`] that manages each request's response future under a [`Pulse`].
///
/// Name requests by route so that a slow handler is attributed: with axum,
/// apply it with `route_layer`, where the matched route is known.
///
/// ```
/// use std::borrow::Cow;
/// use axum::{Router, extract::{MatchedPath, Request}, routing::get};
/// use tokio_pulse::{Pulse, PulseLayer};
///
/// let pulse = Pulse::new();
/// let app: Router = Router::new()
///     .route("/report/{id}", get(|| async { "done" }))
///     .route_layer(PulseLayer::new(&pulse).name_with(|req: &Request| {
///         match req.extensions().get::<MatchedPath>() {
///             Some(path) => Cow::Owned(path.as_str().to_owned()), // "/report/{id}"
///             None => Cow::Borrowed("unmatched"),
///         }
///     }));
/// ```
#[derive(Clone)]
pub struct PulseLayer<N = Fixed> {
    pulse: Pulse,
    namer: N,
    location: &'static Location<'static>,
}

impl PulseLayer<Fixed> {
    /// A layer managing requests under `pulse`, all named `"request"`. The
    /// caller's location is recorded as every request's location.
    #[track_caller]
    pub fn new(pulse: &Pulse) -> Self {
        PulseLayer {
            pulse: pulse.clone(),
            namer: Fixed(Cow::Borrowed("request")),
            location: Location::caller(),
        }
    }
}

impl<N> PulseLayer<N> {
    /// Names every request `name`: for a layer applied to one route or
    /// one service.
    pub fn named(self, name: impl Into<Cow<'static, str>>) -> PulseLayer<Fixed> {
        PulseLayer {
            pulse: self.pulse,
            namer: Fixed(name.into()),
            location: self.location,
        }
    }

    /// Names each request with `namer`, called once per request before the
    /// inner service sees it.
    pub fn name_with<R, F>(self, namer: F) -> PulseLayer<F>
    where
        F: Fn(&R) -> Cow<'static, str>,
    {
        PulseLayer {
            pulse: self.pulse,
            namer,
            location: self.location,
        }
    }
}

impl<S, N: Clone> Layer<S> for PulseLayer<N> {
    type Service = PulseService<S, N>;

    fn layer(&self, inner: S) -> PulseService<S, N> {
        PulseService {
            inner,
            pulse: self.pulse.clone(),
            namer: self.namer.clone(),
            location: self.location,
        }
    }
}

impl<N> fmt::Debug for PulseLayer<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PulseLayer")
            .field("location", &format_args!("{}", self.location))
            .finish_non_exhaustive()
    }
}

/// The service [`PulseLayer`] produces: `inner`, with each response future
/// wrapped in a [`Managed`].
#[derive(Clone)]
pub struct PulseService<S, N = Fixed> {
    inner: S,
    pulse: Pulse,
    namer: N,
    location: &'static Location<'static>,
}

impl<S, N, R> Service<R> for PulseService<S, N>
where
    S: Service<R>,
    N: NameRequest<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Managed<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Managed<S::Future> {
        let name = self.namer.name(&request);
        let future = self.inner.call(request);
        self.pulse.manage(Some(name), self.location, future, None)
    }
}

impl<S: fmt::Debug, N> fmt::Debug for PulseService<S, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PulseService")
            .field("inner", &self.inner)
            .field("location", &format_args!("{}", self.location))
            .finish_non_exhaustive()
    }
}
