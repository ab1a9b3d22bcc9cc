//! A route's filters in order, and the per-request state of running them.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use weir_config::FailurePolicy;
use weir_observe::FilterStats;

use crate::bindings::weir::filter::types;
use crate::host::{Exchange, LocalResponse, Phase};
use crate::pool::{Binding, Failure, InstancePool};
use crate::{FailureKind, Phases};

/// The chain's own answer, which replaces the upstream's: what every phase returns as its
/// error (header phases `Result<(), Answer>`, body chunks `Result<Bytes, Answer>`).
#[derive(Debug)]
pub enum Answer {
    /// A filter answered.
    Respond(LocalResponse),
    /// A fail-closed filter failed: answer 503.
    Fail {
        /// Which filter.
        filter: Arc<str>,
        /// How.
        kind: FailureKind,
    },
}

struct Link {
    pool: Arc<InstancePool>,
    stats: Arc<FilterStats>,
}

/// The filters of one route.
pub struct Chain {
    links: Vec<Link>,
    phases: Phases,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.links.iter().map(|l| &l.pool.spec().filter))
            .finish()
    }
}

/// A request's progress through a chain. The default is a request that entered no filter.
#[derive(Debug, Default)]
pub struct ChainRequest {
    /// One per filter of the chain, in one allocation.
    links: Vec<LinkRun>,
}

/// One filter's part in a request.
#[derive(Debug, Default, Clone)]
struct LinkRun {
    /// Its seat in an instance, once bound.
    bound: Option<Binding>,
    /// Set when it is skipped for the rest of the request (failed open).
    skipped: bool,
    /// Body bytes it holds back (`buffer`).
    held: Vec<u8>,
}

impl Chain {
    /// A chain of instance pools (one per filter), each with its stats for this route.
    pub fn new(links: Vec<(Arc<InstancePool>, Arc<FilterStats>)>) -> Chain {
        // `stateless` is a property of one filter, not of the chain.
        let phases = links
            .iter()
            .fold(Phases::default(), |p, (pool, _)| p.union(pool.phases()))
            .without(Phases::STATELESS);
        Chain {
            links: links
                .into_iter()
                .map(|(pool, stats)| Link { pool, stats })
                .collect(),
            phases,
        }
    }

    /// Every phase any filter declared.
    pub fn phases(&self) -> Phases {
        self.phases
    }

    /// The instance pools, in order.
    pub fn pools(&self) -> impl Iterator<Item = &Arc<InstancePool>> {
        self.links.iter().map(|l| &l.pool)
    }

    /// Starts a request.
    pub fn start(&self) -> ChainRequest {
        let n = self.links.len();
        ChainRequest {
            links: vec![LinkRun::default(); n],
        }
    }

    /// Runs `phase` of filter `i`: `Ok(true)` when it asks to buffer, `Ok(false)` to go on,
    /// or the chain's answer (a local response, or a fail-closed failure).
    async fn step(
        &self,
        i: usize,
        cr: &mut ChainRequest,
        phase: Phase,
        ex: &mut Exchange,
        end: bool,
    ) -> Result<bool, Answer> {
        let link = &self.links[i];
        let started = Instant::now();
        let mut result = self.bound_call(i, cr, phase, ex, end).await;
        if let Err(Failure {
            kind: FailureKind::InstanceLost,
            ..
        }) = &result
        {
            // Another request's trap discarded the instance this one was seated in: that is not
            // this request's failure. Once more, on a fresh instance (its context starts over).
            cr.links[i].bound = None;
            result = self.bound_call(i, cr, phase, ex, end).await;
        }
        link.stats.call(started.elapsed());
        if let Some(notes) = &mut ex.trace
            && notes.phase_runs.len() < crate::MAX_PHASE_RUNS
        {
            notes.phase_runs.push(crate::PhaseRun {
                filter: link.pool.spec().filter.clone(),
                phase: phase.name(),
                start: started,
                end: Instant::now(),
                outcome: match &result {
                    Ok(Some(types::Action::Buffer)) => "buffer".into(),
                    Ok(Some(types::Action::Respond(_))) => "respond".into(),
                    Ok(_) => "continue".into(),
                    Err(f) => format!("failed: {}", f.kind.as_str()),
                },
            });
        }
        match result {
            Ok(Some(types::Action::Continue)) | Ok(None) => Ok(false),
            Ok(Some(types::Action::Buffer)) => Ok(true),
            Ok(Some(types::Action::Respond(r))) => Err(Answer::Respond(local(r))),
            Err(Failure { kind, error }) => {
                link.stats.fail(kind.as_str(), kind.is_budget());
                cr.links[i].bound = None;
                let spec = link.pool.spec();
                tracing::warn!(
                    filter = %spec.filter,
                    route = %ex.props.route,
                    request_id = ex.props.request_id(),
                    kind = kind.as_str(),
                    policy = ?spec.on_error,
                    "filter failed: {error:?}"
                );
                match spec.on_error {
                    FailurePolicy::FailOpen => {
                        cr.links[i].skipped = true;
                        Ok(false)
                    }
                    FailurePolicy::FailClosed => Err(Answer::Fail {
                        filter: spec.filter.clone(),
                        kind,
                    }),
                }
            }
        }
    }

    /// Seats the request in an instance of filter `i` if it is not yet, and runs `phase`.
    async fn bound_call(
        &self,
        i: usize,
        cr: &mut ChainRequest,
        phase: Phase,
        ex: &mut Exchange,
        end: bool,
    ) -> Result<Option<types::Action>, Failure> {
        let pool = &self.links[i].pool;
        match cr.links[i].bound {
            Some(b) => pool.call(b, Some(phase), ex, end).await,
            None => {
                let (b, mut seated) = pool.bind(ex.deadline).await?;
                cr.links[i].bound = Some(b);
                pool.call_seated(&mut seated, b, Some(phase), ex, end).await
            }
        }
    }

    fn runs(&self, i: usize, cr: &ChainRequest, p: Phases) -> bool {
        !cr.links[i].skipped && self.links[i].pool.phases().contains(p)
    }

    /// Request head: filters in order.
    pub async fn request_headers(
        &self,
        cr: &mut ChainRequest,
        ex: &mut Exchange,
    ) -> Result<(), Answer> {
        for i in 0..self.links.len() {
            if !self.runs(i, cr, Phases::REQUEST_HEADERS) {
                continue;
            }
            match self.step(i, cr, Phase::RequestHeaders, ex, false).await {
                Ok(_) => {}
                Err(Answer::Respond(r)) => return self.local_back_through(i, cr, ex, r).await,
                Err(fail) => return Err(fail),
            }
        }
        Ok(())
    }

    /// A local response made by filter `i` in the request phase goes back through the response
    /// phase of the filters before it (CORS headers on a 401 or 429, say), like an upstream's.
    async fn local_back_through(
        &self,
        i: usize,
        cr: &mut ChainRequest,
        ex: &mut Exchange,
        r: LocalResponse,
    ) -> Result<(), Answer> {
        if !(0..i).any(|j| self.runs(j, cr, Phases::RESPONSE_HEADERS)) {
            return Err(Answer::Respond(r));
        }
        ex.status = r.status;
        let pending = std::mem::take(&mut ex.response_headers);
        for (k, v) in &r.headers {
            if let (Ok(k), Ok(v)) = (
                http::HeaderName::from_bytes(k.as_bytes()),
                http::HeaderValue::from_bytes(v.as_bytes()),
            ) {
                ex.response_headers.append(k, v);
            }
        }
        crate::set_response_headers(&mut ex.response_headers, pending, false);
        for j in (0..i).rev() {
            if !self.runs(j, cr, Phases::RESPONSE_HEADERS) {
                continue;
            }
            self.step(j, cr, Phase::ResponseHeaders, ex, false).await?;
        }
        let headers = std::mem::take(&mut ex.response_headers)
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        Err(Answer::Respond(LocalResponse {
            status: ex.status,
            headers,
            body: r.body,
        }))
    }

    /// Response head: filters in reverse order.
    pub async fn response_headers(
        &self,
        cr: &mut ChainRequest,
        ex: &mut Exchange,
    ) -> Result<(), Answer> {
        for i in (0..self.links.len()).rev() {
            if !self.runs(i, cr, Phases::RESPONSE_HEADERS) {
                continue;
            }
            self.step(i, cr, Phase::ResponseHeaders, ex, false).await?;
        }
        Ok(())
    }

    /// One body chunk (request: in order; response: reverse order). A filter that answers
    /// `buffer` holds the bytes; it sees them again, with the next chunk appended, next time.
    pub async fn body(
        &self,
        cr: &mut ChainRequest,
        response: bool,
        chunk: Bytes,
        end: bool,
        ex: &mut Exchange,
    ) -> Result<Bytes, Answer> {
        let (phase, flag) = if response {
            (Phase::ResponseBody, Phases::RESPONSE_BODY)
        } else {
            (Phase::RequestBody, Phases::REQUEST_BODY)
        };
        // Request bodies run in route order, response bodies in reverse (no per-chunk allocation).
        let n = self.links.len();
        let mut data = chunk;
        for k in 0..n {
            let i = if response { n - 1 - k } else { k };
            if !self.runs(i, cr, flag) {
                continue;
            }
            if data.is_empty() && !end {
                break;
            }
            let mut held = std::mem::take(&mut cr.links[i].held);
            held.extend_from_slice(&data);
            ex.body = held;
            let step = self.step(i, cr, phase, ex, end).await;
            let out = std::mem::take(&mut ex.body);
            match step {
                Ok(true) if !end => {
                    if out.len() > self.links[i].pool.spec().max_body {
                        let stats = &self.links[i].stats;
                        stats.fail(FailureKind::BodyLimit.as_str(), true);
                        let filter = self.links[i].pool.spec().filter.clone();
                        if self.links[i].pool.spec().on_error == FailurePolicy::FailOpen {
                            cr.links[i].skipped = true;
                            data = Bytes::from(out);
                            continue;
                        }
                        return Err(Answer::Fail {
                            filter,
                            kind: FailureKind::BodyLimit,
                        });
                    }
                    cr.links[i].held = out;
                    data = Bytes::new();
                }
                Ok(_) => data = Bytes::from(out),
                Err(answer) => return Err(answer),
            }
        }
        Ok(data)
    }

    /// The end of the request: `on-log` for filters that declared it, then `context-done` for
    /// every instance the request was seated in, unless its filter declared itself stateless.
    pub async fn finish(&self, cr: &mut ChainRequest, ex: &mut Exchange) {
        for i in 0..self.links.len() {
            if self.runs(i, cr, Phases::LOG) {
                let _ = self.step(i, cr, Phase::Log, ex, true).await;
            }
        }
        for i in 0..self.links.len() {
            if let Some(b) = cr.links[i].bound.take()
                && !self.links[i].pool.phases().contains(Phases::STATELESS)
                && let Err(Failure { kind, error }) =
                    self.links[i].pool.call(b, None, ex, true).await
            {
                self.links[i].stats.fail(kind.as_str(), kind.is_budget());
                tracing::warn!(filter = %self.links[i].pool.spec().filter, "context-done failed: {error:?}");
            }
        }
    }
}

fn local(r: types::LocalResponse) -> LocalResponse {
    LocalResponse {
        // An out-of-range status from a filter is its bug; answer 500 rather than send garbage.
        status: if (200..=599).contains(&r.status) {
            r.status
        } else {
            500
        },
        headers: r.headers,
        body: Bytes::from(r.body),
    }
}
