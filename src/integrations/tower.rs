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
//! # What it can do for a heavy handler
//!
//! Nothing can preempt a poll that is already running. A handler that
//! computes (or blocks) for 20 ms in one poll has held its worker for 20 ms
//! before anything can judge that request. So requests are remembered by
//! name (their route, see [`PulseLayer::name_with`]): the first requests of
//! a route are judged as they run, each one that misbehaves raises the
//! tier the route's *next* requests start at (see
//! [`Origin`](crate::Origin)), and after a few of them new requests start
//! isolated: their first poll already runs on the isolation pool, off the
//! main workers, and the fast routes beside them keep their latency. A
//! route whose requests behave again steps back down, one tier per run of
//! clean requests.
//!
//! Isolation moves the request's future to another thread, so it needs the
//! inner service's futures to be `Send + 'static`, as axum, tonic and hyper
//! all require. For a service whose futures are not `Send` (run on a
//! `LocalSet`), [`PulseLayer::local`] manages requests without moving
//! them: they go no further than [`Tier::Yield`], where their polls give
//! way to other work.
//!
//! For a handler with a long loop, put [`checkpoint`](crate::checkpoint)
//! in the loop: once the request is suspect, each checkpoint past its
//! slice gives way, and a poll is never longer than a slice.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::panic::Location;
use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

use crate::managed::{Managed, isolator};
use crate::pulse::Pulse;

/// Marks a [`PulseLayer`] whose requests can move to the isolation pool:
/// the inner service's futures must be `Send + 'static`. The default.
#[derive(Clone, Copy, Debug, Default)]
pub struct Isolating;

/// Marks a [`PulseLayer`] whose requests stay on the thread that polls
/// them (futures that are not `Send`), capped at [`Tier::Yield`](crate::Tier::Yield).
/// Made by [`PulseLayer::local`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Local;

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
pub struct PulseLayer<N = Fixed, M = Isolating> {
    pulse: Pulse,
    namer: N,
    location: &'static Location<'static>,
    mode: PhantomData<M>,
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
            mode: PhantomData,
        }
    }
}

impl<N, M> PulseLayer<N, M> {
    /// Names every request `name`: for a layer applied to one route or
    /// one service. Requests are remembered by name (see the module docs),
    /// so give each route its own.
    pub fn named(self, name: impl Into<Cow<'static, str>>) -> PulseLayer<Fixed, M> {
        PulseLayer {
            pulse: self.pulse,
            namer: Fixed(name.into()),
            location: self.location,
            mode: PhantomData,
        }
    }

    /// Names each request with `namer`, called once per request before the
    /// inner service sees it. Name by route (a bounded set), not by raw URI:
    /// requests are remembered by name, and while remembered names are
    /// bounded (see [`origin_memory_capacity`](crate::PulseBuilder::origin_memory_capacity)),
    /// a route's name gathers the evidence of all its requests.
    pub fn name_with<R, F>(self, namer: F) -> PulseLayer<F, M>
    where
        F: Fn(&R) -> Cow<'static, str>,
    {
        PulseLayer {
            pulse: self.pulse,
            namer,
            location: self.location,
            mode: PhantomData,
        }
    }

    /// For services whose response futures are not `Send`: requests are
    /// managed where they are polled and never moved to the isolation
    /// pool, so they go no further than [`Tier::Yield`](crate::Tier::Yield).
    pub fn local(self) -> PulseLayer<N, Local> {
        PulseLayer {
            pulse: self.pulse,
            namer: self.namer,
            location: self.location,
            mode: PhantomData,
        }
    }
}

impl<S, N: Clone, M> Layer<S> for PulseLayer<N, M> {
    type Service = PulseService<S, N, M>;

    fn layer(&self, inner: S) -> PulseService<S, N, M> {
        PulseService {
            inner,
            pulse: self.pulse.clone(),
            namer: self.namer.clone(),
            location: self.location,
            mode: PhantomData,
        }
    }
}

impl<N, M> fmt::Debug for PulseLayer<N, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PulseLayer")
            .field("location", &format_args!("{}", self.location))
            .finish_non_exhaustive()
    }
}

/// The service [`PulseLayer`] produces: `inner`, with each response future
/// wrapped in a [`Managed`].
#[derive(Clone)]
pub struct PulseService<S, N = Fixed, M = Isolating> {
    inner: S,
    pulse: Pulse,
    namer: N,
    location: &'static Location<'static>,
    mode: PhantomData<M>,
}

impl<S, N, R> Service<R> for PulseService<S, N, Isolating>
where
    S: Service<R>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
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
        self.pulse
            .manage(Some(name), self.location, future, Some(isolator()))
    }
}

impl<S, N, R> Service<R> for PulseService<S, N, Local>
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

impl<S: fmt::Debug, N, M> fmt::Debug for PulseService<S, N, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PulseService")
            .field("inner", &self.inner)
            .field("location", &format_args!("{}", self.location))
            .finish_non_exhaustive()
    }
}
