//! A filter module with one config, and its pool of configured instances.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use wasmtime::{Store, Trap, UpdateDeadline};
use weir_config::{FailurePolicy, Grants};

use crate::bindings::FilterWorld;
use crate::bindings::weir::filter::types;
use crate::budget::{Running, Watchdog};
use crate::host::{Exchange, HostState, Phase};
use crate::module::{Module, Runtime, RuntimeInner};
use crate::{FailureKind, Phases};

/// Everything that identifies a filter's instance pool besides its module.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterSpec {
    /// Filter name (for logs, metrics and messages).
    pub filter: Arc<str>,
    /// The effective config, as JSON text.
    pub config: String,
    /// Linear memory cap per instance, bytes.
    pub memory: usize,
    /// CPU time per phase call (callout waits excluded; see `budget`).
    pub time_per_phase: Duration,
    /// Most body bytes held by `buffer`.
    pub max_body: usize,
    /// Most instances.
    pub max_instances: usize,
    /// What failures do to requests.
    pub on_error: FailurePolicy,
    /// Granted capabilities.
    pub grants: Grants,
}

pub(crate) struct PoolShared {
    pub spec: FilterSpec,
    pub runtime: Arc<RuntimeInner>,
}

pub(crate) struct Live {
    store: Store<HostState>,
    world: FilterWorld,
    generation: u64,
    next_ctx: u32,
    /// Set while a call runs: if the calling future is dropped midway (client gone), the
    /// instance is left inside a call and must not be entered again.
    in_call: bool,
}

#[derive(Default)]
struct Slot {
    live: tokio::sync::Mutex<Option<Live>>,
}

/// A request's seat in one instance of a pool.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Binding {
    slot: usize,
    generation: u64,
    pub ctx: u32,
}

/// A locked instance slot.
pub(crate) type Seated<'a> = tokio::sync::MutexGuard<'a, Option<Live>>;

/// A failed call: what kind, and the error behind it (kept whole for the log).
#[derive(Debug)]
pub(crate) struct Failure {
    pub kind: FailureKind,
    pub error: wasmtime::Error,
}

impl Failure {
    fn new(kind: FailureKind, error: impl Into<wasmtime::Error>) -> Failure {
        Failure {
            kind,
            error: error.into(),
        }
    }

    fn msg(kind: FailureKind, message: impl Into<String>) -> Failure {
        Failure::new(kind, wasmtime::Error::msg(message.into()))
    }
}

static GENERATION: AtomicU64 = AtomicU64::new(1);

/// A filter module with one config: a pool of instances configured with it.
pub struct InstancePool {
    shared: Arc<PoolShared>,
    module: Arc<Module>,
    phases: Phases,
    slots: Box<[Slot]>,
    created: AtomicUsize,
    next: AtomicUsize,
    /// Guest calls made (phases and `context-done`; not `configure`).
    guest_calls: AtomicU64,
    /// Requests waiting for an instance.
    queue: Arc<weir_observe::QueueStats>,
}

impl std::fmt::Debug for InstancePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstancePool")
            .field("filter", &self.shared.spec.filter)
            .field("module", &self.module.hash)
            .finish()
    }
}

impl InstancePool {
    /// Creates the pool: instantiates its first instance and runs `configure`, so a config the
    /// filter rejects fails here, before any request sees it.
    pub async fn new(
        runtime: &Runtime,
        module: Arc<Module>,
        spec: FilterSpec,
    ) -> Result<Arc<InstancePool>, String> {
        let shared = Arc::new(PoolShared {
            spec,
            runtime: runtime.inner.clone(),
        });
        let (live, phases) =
            instantiate(&shared, &module)
                .await
                .map_err(|Failure { kind, error }| match kind {
                    FailureKind::Instantiate => format!("{error:?}"),
                    k => format!(
                        "the filter failed while configuring ({}): {error:?}",
                        k.as_str()
                    ),
                })?;
        let queue = runtime.inner.registry.filter_queue(&shared.spec.filter);
        let n = shared.spec.max_instances.max(1);
        let slots: Box<[Slot]> = (0..n).map(|_| Slot::default()).collect();
        *slots[0].live.try_lock().expect("fresh slot") = Some(live);
        Ok(Arc::new(InstancePool {
            shared,
            module,
            phases,
            slots,
            created: AtomicUsize::new(1),
            next: AtomicUsize::new(0),
            guest_calls: AtomicU64::new(0),
            queue,
        }))
    }

    /// The phases the filter declared.
    pub fn phases(&self) -> Phases {
        self.phases
    }

    /// The module.
    pub fn module(&self) -> &Arc<Module> {
        &self.module
    }

    /// The spec.
    pub fn spec(&self) -> &FilterSpec {
        &self.shared.spec
    }

    /// Whether this pool is what `module` with `spec` would build, so a new snapshot can take
    /// it over (instances, queue and counters) instead of instantiating the filter again.
    pub fn serves(&self, module: &Module, spec: &FilterSpec) -> bool {
        self.module.hash == module.hash && self.shared.spec == *spec
    }

    /// Instances created so far.
    pub fn instances(&self) -> usize {
        self.created.load(Relaxed).min(self.slots.len())
    }

    /// Guest calls made so far: phase calls and `context-done` (not `configure`).
    pub fn guest_calls(&self) -> u64 {
        self.guest_calls.load(Relaxed)
    }

    /// Linear memory of each idle instance, in bytes (instances in a call are skipped).
    pub fn instance_memory(&self) -> Vec<usize> {
        self.slots
            .iter()
            .filter_map(|s| {
                let g = s.live.try_lock().ok()?;
                g.as_ref().map(|l| l.store.data().limiter.size)
            })
            .collect()
    }

    /// Seats a request in an instance: a free one if any, else a new one while under
    /// `max_instances`, else it queues on one — until `deadline`, when it gives up (a
    /// `deadline` failure, under the filter's failure policy).
    ///
    /// The instance stays locked (the guard) so the request's first call runs in it before
    /// anyone else's: a neighbour's trap cannot discard it in between.
    pub(crate) async fn bind(
        &self,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<(Binding, Seated<'_>), Failure> {
        let created = self.created.load(Relaxed).min(self.slots.len());
        let start = self.next.fetch_add(1, Relaxed);
        for k in 0..created {
            let i = (start + k) % created;
            if let Ok(mut g) = self.slots[i].live.try_lock()
                && let Some(b) = self.seat(i, &mut g).await?
            {
                return Ok((b, g));
            }
        }
        let waiting = self.queue.enter();
        let slow = async {
            // All busy: grow the pool if allowed.
            let i = self.created.fetch_add(1, Relaxed);
            if i < self.slots.len() {
                let mut g = self.slots[i].live.lock().await;
                if let Some(b) = self.seat(i, &mut g).await? {
                    return Ok((b, g));
                }
            }
            let i = start % self.slots.len().min(created.max(1));
            let mut g = self.slots[i].live.lock().await;
            match self.seat(i, &mut g).await? {
                Some(b) => Ok((b, g)),
                None => Err(Failure::msg(
                    FailureKind::Instantiate,
                    "no instance available",
                )),
            }
        };
        match deadline {
            None => slow.await,
            Some(d) => tokio::time::timeout_at(d, slow).await.unwrap_or_else(|_| {
                Err(Failure::msg(
                    FailureKind::Deadline,
                    format!(
                        "no instance of {:?} was free within the request's deadline (waited {:?})",
                        self.shared.spec.filter,
                        waiting.waited()
                    ),
                ))
            }),
        }
    }

    /// Seats in slot `i` (already locked), creating or replacing its instance when needed.
    async fn seat(&self, i: usize, live: &mut Option<Live>) -> Result<Option<Binding>, Failure> {
        if live.as_ref().is_some_and(|l| l.in_call) {
            *live = None;
        }
        if live.is_none() {
            *live = Some(instantiate_off_worker(&self.shared, &self.module).await?);
        }
        let Some(l) = live.as_mut() else {
            return Ok(None);
        };
        l.next_ctx = l.next_ctx.wrapping_add(1);
        Ok(Some(Binding {
            slot: i,
            generation: l.generation,
            ctx: l.next_ctx,
        }))
    }

    /// Runs one phase (or `context-done`) of a bound request and returns the guest's action
    /// (`None` from `on-log` and `context-done`, which answer nothing). `ex` is moved into the
    /// store for the call and back. Any trap discards the instance.
    pub(crate) async fn call(
        &self,
        b: Binding,
        phase: Option<Phase>,
        ex: &mut Exchange,
        end: bool,
    ) -> Result<Option<types::Action>, Failure> {
        // Uncontended (the usual case): no acquire future, no waiter node.
        let slot = &self.slots[b.slot].live;
        let mut guard = match slot.try_lock() {
            Ok(g) => g,
            Err(_) => slot.lock().await,
        };
        self.call_seated(&mut guard, b, phase, ex, end).await
    }

    /// [`call`](Self::call) in an instance already locked (by [`bind`](Self::bind)).
    pub(crate) async fn call_seated(
        &self,
        guard: &mut Seated<'_>,
        b: Binding,
        phase: Option<Phase>,
        ex: &mut Exchange,
        end: bool,
    ) -> Result<Option<types::Action>, Failure> {
        let live = match guard.as_mut() {
            Some(l) if l.generation == b.generation && !l.in_call => l,
            _ => {
                return Err(Failure::msg(
                    FailureKind::InstanceLost,
                    "the instance serving this request was discarded",
                ));
            }
        };
        self.guest_calls.fetch_add(1, Relaxed);
        let data = live.store.data_mut();
        std::mem::swap(&mut data.ex, ex);
        data.phase = phase.unwrap_or(Phase::Log);
        data.callouts = 0;
        let _running = enter(
            &mut live.store,
            &self.shared.runtime.watchdog,
            self.shared.spec.time_per_phase,
        );
        live.in_call = true;
        let f = live.world.weir_filter_filter();
        let store = &mut live.store;
        let result = match phase {
            Some(Phase::RequestHeaders) => f
                .call_on_request_headers(&mut *store, b.ctx)
                .await
                .map(Some),
            Some(Phase::RequestBody) => f
                .call_on_request_body(&mut *store, b.ctx, end)
                .await
                .map(Some),
            Some(Phase::ResponseHeaders) => f
                .call_on_response_headers(&mut *store, b.ctx)
                .await
                .map(Some),
            Some(Phase::ResponseBody) => f
                .call_on_response_body(&mut *store, b.ctx, end)
                .await
                .map(Some),
            Some(Phase::Log) => f.call_on_log(&mut *store, b.ctx).await.map(|()| None),
            Some(Phase::Configure) | None => {
                f.call_context_done(&mut *store, b.ctx).await.map(|()| None)
            }
        };
        live.in_call = false;
        let data = live.store.data_mut();
        std::mem::swap(&mut data.ex, ex);
        match result {
            Ok(r) => Ok(r),
            Err(e) => {
                let kind = classify(&e, data);
                **guard = None;
                Err(Failure::new(kind, e))
            }
        }
    }
}

/// Enters a guest call on `store`, in the order the watchdog needs: the epoch deadline armed,
/// then the budget started (which asks the watchdog to look); the call counts as running until
/// the guard drops, however its future ends (the watchdog's backstop, see `budget`).
fn enter<'w>(store: &mut Store<HostState>, watchdog: &'w Watchdog, limit: Duration) -> Running<'w> {
    store.set_epoch_deadline(1);
    let running = watchdog.running();
    store.data_mut().budget.start(limit);
    running
}

fn classify(e: &wasmtime::Error, data: &HostState) -> FailureKind {
    if data.limiter.breached {
        return FailureKind::Memory;
    }
    match e.downcast_ref::<Trap>() {
        _ if data.budget.hit => FailureKind::Deadline,
        Some(Trap::Interrupt) => FailureKind::Deadline,
        Some(Trap::UnreachableCodeReached) => FailureKind::Panic,
        _ => FailureKind::Trap,
    }
}

/// A new configured instance, made on a blocking-pool thread: guest start-up code (a Go
/// runtime's) runs for milliseconds, which must not stall a worker thread's other requests.
async fn instantiate_off_worker(
    shared: &Arc<PoolShared>,
    module: &Arc<Module>,
) -> Result<Live, Failure> {
    let (shared, module) = (shared.clone(), module.clone());
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || rt.block_on(instantiate(&shared, &module)))
        .await
        .map_err(|e| {
            Failure::msg(
                FailureKind::Instantiate,
                format!("instantiation task failed: {e}"),
            )
        })?
        .map(|(live, _)| live)
}

/// A new configured instance.
async fn instantiate(shared: &Arc<PoolShared>, module: &Module) -> Result<(Live, Phases), Failure> {
    let rt = &shared.runtime;
    let mut store = Store::new(&rt.engine, HostState::new(shared.clone()));
    store.limiter(|s| &mut s.limiter);
    store.epoch_deadline_callback(|mut ctx| {
        let budget = &mut ctx.data_mut().budget;
        if !budget.tick() {
            wasmtime::bail!("time budget of {:?} per phase exceeded", budget.limit());
        }
        Ok(UpdateDeadline::Continue(1))
    });
    // Instantiation and configure run guest start-up code (a Go runtime takes milliseconds):
    // give them a larger, still bounded, budget.
    let _running = enter(
        &mut store,
        &rt.watchdog,
        (shared.spec.time_per_phase.saturating_mul(20)).max(Duration::from_secs(1)),
    );
    let world = module
        .pre
        .instantiate_async(&mut store)
        .await
        .map_err(|e| {
            Failure::msg(
                FailureKind::Instantiate,
                format!("cannot instantiate filter {:?}: {e:#}", shared.spec.filter),
            )
        })?;
    let configured = world
        .weir_filter_filter()
        .call_configure(&mut store, &shared.spec.config)
        .await;
    let phases = match configured {
        Ok(Ok(p)) => Phases::from(p),
        Ok(Err(e)) => {
            return Err(Failure::msg(
                FailureKind::Instantiate,
                format!(
                    "filter {:?} rejected its config: {}",
                    shared.spec.filter, e.message
                ),
            ));
        }
        Err(e) => return Err(Failure::new(classify(&e, store.data()), e)),
    };
    let generation = GENERATION.fetch_add(1, Relaxed);
    Ok((
        Live {
            store,
            world,
            generation,
            next_ctx: 0,
            in_call: false,
        },
        phases,
    ))
}
