//! The engine, the linker, and compiled filter modules (cached in memory and on disk).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use anyhow::{Context as _, bail};
use dashmap::DashMap;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig};
use weir_observe::Registry;

use crate::bindings::FilterWorldPre;
use crate::budget::Watchdog;
use crate::componentize::{WasmKind, componentize, wasm_kind};
use crate::host::HostState;
use crate::{Callouts, KvLimits};

/// Largest linear memory any filter may be given (`limits.memory` is checked against it).
pub const MAX_MEMORY: usize = 256 << 20;

/// Address space reserved for each linear memory: all a 32-bit index can reach (see
/// `Runtime::with_engine_config`).
const FULL_RESERVATION: u64 = 1 << 32;

/// Runtime settings.
pub struct RuntimeOptions {
    /// Where compiled components are cached; `None` keeps them in memory only.
    pub cache_dir: Option<PathBuf>,
    /// Sends callouts; `None` makes every callout fail with `unavailable`.
    pub callouts: Option<Arc<dyn Callouts>>,
    /// Where filter metrics go.
    pub registry: Registry,
    /// Most live filter instances in the whole process (pooling allocator slots).
    pub max_instances: u32,
    /// Bounds on the shared key-value store.
    pub kv_limits: KvLimits,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            cache_dir: None,
            callouts: None,
            registry: Registry::new(),
            max_instances: 1000,
            kv_limits: KvLimits::default(),
        }
    }
}

/// The process-wide filter runtime. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    pub(crate) inner: Arc<RuntimeInner>,
}

pub(crate) struct RuntimeInner {
    pub engine: Engine,
    pub linker: Linker<HostState>,
    modules: DashMap<String, Arc<Module>>,
    cache_dir: Option<PathBuf>,
    /// Names the engine configuration in cache file names (see [`engine_tag`]).
    engine_tag: String,
    pub state: crate::state::State,
    /// The series filter metrics have created, to bound them.
    pub series: crate::series::Series,
    pub callouts: Option<Arc<dyn Callouts>>,
    pub registry: Registry,
    pub epoch_start: Instant,
    /// Advances the epoch when a call may have spent its time (see `budget`).
    pub watchdog: Arc<Watchdog>,
}

impl Drop for RuntimeInner {
    fn drop(&mut self) {
        self.watchdog.stop();
    }
}

/// A compiled filter module, ready to instantiate.
pub struct Module {
    /// The filter name it was loaded for.
    pub name: String,
    /// SHA-256 of the `.wasm` bytes: the module's version.
    pub hash: String,
    /// When it was loaded.
    pub loaded_at: SystemTime,
    /// Whether loading compiled it (false: served from the cache).
    pub compiled: bool,
    pub(crate) pre: FilterWorldPre<HostState>,
}

impl std::fmt::Debug for Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Module")
            .field("name", &self.name)
            .field("hash", &self.hash)
            .finish()
    }
}

impl Runtime {
    /// Creates the engine (pooling allocator, epoch interruption) and starts the epoch ticker.
    ///
    /// The compiled-filter cache is used only if its directory is private: it is created with
    /// mode 0700, and one that is writable by group or others, or owned by another user, is
    /// not used (a warning is logged and filters are compiled at every start), because loading
    /// native code from it would run whatever another user put there.
    pub fn new(opts: RuntimeOptions) -> anyhow::Result<Runtime> {
        Runtime::with_engine_config(opts, |_| {})
    }

    /// [`Runtime::new`], with a last say on the engine's configuration (tests).
    pub(crate) fn with_engine_config(
        opts: RuntimeOptions,
        tweak: impl FnOnce(&mut wasmtime::Config),
    ) -> anyhow::Result<Runtime> {
        let mut pool = PoolingAllocationConfig::default();
        let n = opts.max_instances.max(16);
        pool.total_component_instances(n)
            // Rust/Go components carry a few core instances each (the module plus adapters).
            .max_core_instances_per_component(32)
            .total_core_instances(n * 8)
            .total_memories(n * 2)
            .total_tables(n * 4)
            .total_stacks(n)
            .max_memory_size(MAX_MEMORY)
            .max_core_instance_size(4 << 20)
            .max_component_instance_size(4 << 20)
            .max_memories_per_component(8)
            .max_tables_per_component(16)
            // Keep a little of each freed memory resident: re-instantiation skips page faults.
            .linear_memory_keep_resident(64 << 10)
            .max_unused_warm_slots(n / 4);
        let mut cfg = wasmtime::Config::new();
        cfg.wasm_component_model(true)
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            // Each memory slot reserves the whole 32-bit index space plus a guard, so any
            // address a guest computes lands in its reservation: cranelift then compiles loads
            // and stores without bounds checks (a reservation of `MAX_MEMORY` made every access
            // a compare, a conditional move and two loads from the instance). It is address
            // space only: a filter still grows to at most `MAX_MEMORY` (`max_memory_size`) and
            // its `limits.memory` (the limiter).
            .memory_reservation(FULL_RESERVATION)
            .memory_guard_size(32 << 20)
            // Pooled memories never move: their base can be loaded once, not at every access.
            .memory_may_move(false)
            .max_wasm_stack(512 << 10)
            .async_stack_size(1 << 20)
            .cranelift_opt_level(wasmtime::OptLevel::Speed);
        tweak(&mut cfg);
        let engine = Engine::new(&cfg).or_else(|full| {
            // Where the address space is bounded (`ulimit -v`, valgrind) the pool may not fit
            // with whole-index-space reservations: fall back to reservations of `MAX_MEMORY`
            // (filters then run with bounds checks, slower) rather than refuse to start.
            cfg.memory_reservation(MAX_MEMORY as u64);
            let engine = Engine::new(&cfg).map_err(|e| {
                anyhow::anyhow!(
                    "cannot create the wasm engine: {e:#} (and with 4 GiB reservations: {full:#})"
                )
            })?;
            tracing::warn!(
                "the address space cannot hold {n} filter instances of 8 GiB of reservations each \
                 ({full:#}): filters run with bounds checks on every memory access, slower; \
                 raise the address-space limit (ulimit -v), or lower filter_instances, to run \
                 them at full speed"
            );
            Ok::<_, anyhow::Error>(engine)
        })?;

        let mut linker: Linker<HostState> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| anyhow::anyhow!("linking WASI: {e:#}"))?;
        crate::bindings::FilterWorld::add_to_linker::<HostState, HasSelf<HostState>>(
            &mut linker,
            |s| s,
        )
        .map_err(|e| anyhow::anyhow!("linking the weir:filter imports: {e:#}"))?;

        let watchdog = Arc::new(Watchdog::new());
        {
            let (engine, watchdog) = (engine.clone(), watchdog.clone());
            std::thread::Builder::new()
                .name("weir-epoch".into())
                .spawn(move || watchdog.run(|| engine.increment_epoch()))?;
        }
        let cache_dir = opts.cache_dir.filter(|dir| match open_private_dir(dir) {
            Ok(()) => true,
            Err(why) => {
                tracing::warn!(
                    "not using the filter cache {}: {why}; filters are compiled at every start",
                    dir.display()
                );
                false
            }
        });
        let engine_tag = engine_tag(&engine);
        Ok(Runtime {
            inner: Arc::new(RuntimeInner {
                engine,
                linker,
                modules: DashMap::new(),
                cache_dir,
                engine_tag,
                state: crate::state::State::new(opts.kv_limits, opts.registry.state()),
                series: Default::default(),
                callouts: opts.callouts,
                registry: opts.registry,
                epoch_start: Instant::now(),
                watchdog,
            }),
        })
    }

    /// The default on-disk cache: `$XDG_CACHE_HOME/weir/filters` or `~/.cache/weir/filters`.
    pub fn default_cache_dir() -> Option<PathBuf> {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
        Some(base.join("weir").join("filters"))
    }

    /// Reads and loads a filter file.
    pub fn load_file(&self, name: &str, path: &Path) -> anyhow::Result<Arc<Module>> {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        self.load(name, &bytes)
    }

    /// Loads a filter from its bytes: from the in-memory cache, the disk cache, or by compiling
    /// (and then caching). Checks that it is a component exporting the filter interface.
    pub fn load(&self, name: &str, bytes: &[u8]) -> anyhow::Result<Arc<Module>> {
        let hash = hex::encode(Sha256::digest(bytes));
        if let Some(m) = self.inner.modules.get(&hash) {
            return Ok(m.clone());
        }
        // A core module from the Go or AssemblyScript SDK is made a component here, only when
        // its compiled form is not cached (the cache key is the hash of the bytes as given).
        let componentized = || -> anyhow::Result<std::borrow::Cow<'_, [u8]>> {
            match wasm_kind(bytes) {
                WasmKind::Component => Ok(bytes.into()),
                WasmKind::CoreModule => Ok(componentize(bytes)?.into()),
                WasmKind::NotWasm => bail!("not a WebAssembly component or module"),
            }
        };
        let (component, compiled) = self.compile_cached(&hash, componentized)?;
        // Where the guest's machine code lives: a profiler (perf, callgrind) shows JIT code as
        // bare addresses, and the compiled file's symbols (`nm`) are offsets from this start.
        let text = component.text().as_ptr_range();
        tracing::debug!(
            "filter {name:?} ({}): code at {:p}..{:p}",
            &hash[..12],
            text.start,
            text.end
        );
        let ty = component.component_type();
        let engine = &self.inner.engine;
        crate::componentize::check_contract(
            (ty.imports(engine).map(|(n, _)| n)).chain(ty.exports(engine).map(|(n, _)| n)),
        )?;
        let pre = self
            .inner
            .linker
            .instantiate_pre(&component)
            .map_err(|e| anyhow::anyhow!("{e:#}"))?;
        let pre = FilterWorldPre::new(pre).map_err(|e| {
            anyhow::anyhow!(
                "the component does not export weir:filter/filter@{}: {e:#}",
                crate::componentize::CONTRACT_VERSION
            )
        })?;
        let m = Arc::new(Module {
            name: name.to_string(),
            hash: hash.clone(),
            loaded_at: SystemTime::now(),
            compiled,
            pre,
        });
        self.prune_modules();
        self.inner.modules.insert(hash, m.clone());
        Ok(m)
    }

    fn compile_cached<'b>(
        &self,
        hash: &str,
        bytes: impl FnOnce() -> anyhow::Result<std::borrow::Cow<'b, [u8]>>,
    ) -> anyhow::Result<(Component, bool)> {
        let engine = &self.inner.engine;
        // Checked again at every load: the directory may have changed since the start.
        let dir = self.inner.cache_dir.as_deref().filter(|dir| {
            private(dir)
                .inspect_err(|why| {
                    tracing::warn!("not using the filter cache {}: {why}", dir.display())
                })
                .is_ok()
        });
        let file = dir.map(|d| d.join(format!("{hash}-{}.cwasm", self.inner.engine_tag)));
        if let Some(file) = &file
            && file.exists()
        {
            match private(file) {
                Ok(()) => {
                    // SAFETY: the file was written by this user into a directory only this
                    // user can write to, serialized from bytes with this very hash by an engine
                    // with this compatibility hash; wasmtime also checks the engine
                    // configuration on load and rejects an incompatible artifact (we then
                    // recompile below).
                    #[allow(unsafe_code)]
                    let loaded = unsafe { Component::deserialize_file(engine, file) };
                    match loaded {
                        Ok(c) => return Ok((c, false)),
                        Err(e) => tracing::warn!("ignoring cached filter {}: {e}", file.display()),
                    }
                }
                Err(why) => tracing::warn!("ignoring cached filter {}: {why}", file.display()),
            }
        }
        let component = Component::new(engine, &bytes()?)
            .map_err(|e| anyhow::anyhow!("invalid component: {e:#}"))?;
        if let (Some(dir), Some(file)) = (dir, &file) {
            match component.serialize() {
                Ok(bytes) => {
                    // Write then rename: a concurrent reader never sees half a file.
                    let tmp = file.with_extension(format!("tmp{}", std::process::id()));
                    if std::fs::write(&tmp, bytes)
                        .and_then(|()| std::fs::rename(&tmp, file))
                        .is_err()
                    {
                        let _ = std::fs::remove_file(&tmp);
                    }
                    prune_cache(dir);
                }
                Err(e) => tracing::warn!("cannot serialize compiled filter: {e}"),
            }
        }
        Ok((component, true))
    }

    /// Drops compiled modules no snapshot uses any more, keeping the [`KEEP_UNUSED`] newest
    /// (a rollback finds them here; older ones are recompiled or read from the disk cache).
    fn prune_modules(&self) {
        let mut unused: Vec<(SystemTime, String)> = (self.inner.modules.iter())
            .filter(|m| Arc::strong_count(m.value()) == 1)
            .map(|m| (m.loaded_at, m.key().clone()))
            .collect();
        if unused.len() <= KEEP_UNUSED {
            return;
        }
        unused.sort();
        for (_, hash) in &unused[..unused.len() - KEEP_UNUSED] {
            (self.inner.modules).remove_if(hash, |_, m| Arc::strong_count(m) == 1);
        }
    }

    /// Compiled modules held in memory (for tests and introspection).
    pub fn modules_in_memory(&self) -> usize {
        self.inner.modules.len()
    }

    /// The shared state (the embedded store, and the Redis backend when one is in use).
    pub fn state(&self) -> &crate::state::State {
        &self.inner.state
    }
}

/// Compiled modules no snapshot uses that stay in memory.
const KEEP_UNUSED: usize = 8;

/// Most compiled filters kept in the disk cache; the least recently written go first.
const KEEP_CACHED_FILES: usize = 128;

/// A short name for the engine's compatibility hash: artifacts of engines with different
/// settings, targets or wasmtime versions get different file names, so they neither load nor
/// overwrite each other.
fn engine_tag(engine: &Engine) -> String {
    struct Sha(Sha256);
    impl std::hash::Hasher for Sha {
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
        fn finish(&self) -> u64 {
            0
        }
    }
    let mut h = Sha(Sha256::new());
    std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut h);
    hex::encode(&h.0.finalize()[..8])
}

/// Creates `dir` (mode 0700) if it does not exist, then checks that it is private.
fn open_private_dir(dir: &Path) -> Result<(), String> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
        .map_err(|e| format!("cannot create it: {e}"))?;
    private(dir)
}

/// Whether `path` can only have been written by this user: owned by the effective uid and not
/// writable by group or others.
#[cfg(unix)]
fn private(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot inspect it: {e}"))?;
    ownership_problem(meta.uid(), meta.mode(), rustix::process::geteuid().as_raw())
}

#[cfg(not(unix))]
fn private(_: &Path) -> Result<(), String> {
    Ok(())
}

fn ownership_problem(uid: u32, mode: u32, euid: u32) -> Result<(), String> {
    if uid != euid {
        return Err(format!(
            "it is owned by uid {uid}, not by this process's uid {euid} (chown it)"
        ));
    }
    if mode & 0o022 != 0 {
        return Err(format!(
            "group or others may write to it (mode {:o}; chmod go-w it)",
            mode & 0o7777
        ));
    }
    Ok(())
}

/// Keeps the disk cache to [`KEEP_CACHED_FILES`] compiled filters.
fn prune_cache(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<(SystemTime, PathBuf)> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .collect();
    if files.len() <= KEEP_CACHED_FILES {
        return;
    }
    files.sort();
    for (_, p) in &files[..files.len() - KEEP_CACHED_FILES] {
        let _ = std::fs::remove_file(p);
    }
}

#[cfg(test)]
mod tests;
