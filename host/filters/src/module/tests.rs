//! The compiled-filter cache: private directories only, artifacts keyed by engine, and bounded
//! in memory and on disk.

use std::os::unix::fs::PermissionsExt;

use wit_parser::abi::{AbiVariant, WasmType};
use wit_parser::{Resolve, WorldItem};

use std::time::Duration;

use super::*;
use crate::componentize::{CONTRACT_VERSION, FILTER_WIT, componentize_with};

fn leb(out: &mut Vec<u8>, mut v: usize) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn name(out: &mut Vec<u8>, s: &str) {
    leb(out, s.len());
    out.extend(s.as_bytes());
}

fn section(out: &mut Vec<u8>, id: u8, count: usize, items: &[u8]) {
    let mut body = Vec::new();
    leb(&mut body, count);
    body.extend(items);
    out.push(id);
    leb(out, body.len());
    out.extend(body);
}

/// A core module exporting every function of the filter world (bodies `unreachable`) plus
/// `memory` and `cabi_realloc`, with signatures from the WIT itself.
fn filter_core_module() -> anyhow::Result<Vec<u8>> {
    filter_core_module_for(FILTER_WIT)
}

/// [`filter_core_module`] for the contract in the WIT text `wit`.
fn filter_core_module_for(wit: &str) -> anyhow::Result<Vec<u8>> {
    let mut resolve = Resolve::default();
    let pkg = resolve.push_str("filter.wit", wit)?;
    let world = resolve.select_world(&[pkg], Some("filter-world"))?;
    let mut funcs: Vec<(String, Vec<WasmType>, Vec<WasmType>)> = Vec::new();
    for (key, item) in &resolve.worlds[world].exports {
        let WorldItem::Interface { id, .. } = item else {
            anyhow::bail!("unexpected export {key:?}");
        };
        for f in resolve.interfaces[*id].functions.values() {
            let sig = resolve.wasm_signature(AbiVariant::GuestExport, f);
            let export = format!("{}#{}", resolve.name_world_key(key), f.name);
            funcs.push((export, sig.params, sig.results));
        }
    }
    funcs.push((
        "cabi_realloc".into(),
        vec![WasmType::I32; 4],
        vec![WasmType::I32],
    ));
    let valtype = |t: &WasmType| match t {
        WasmType::I64 | WasmType::PointerOrI64 => 0x7e,
        WasmType::F32 => 0x7d,
        WasmType::F64 => 0x7c,
        _ => 0x7f,
    };
    let (mut types, mut func_idx, mut exports, mut code) = (vec![], vec![], vec![], vec![]);
    for (i, (export, params, results)) in funcs.iter().enumerate() {
        types.push(0x60);
        leb(&mut types, params.len());
        types.extend(params.iter().map(valtype));
        leb(&mut types, results.len());
        types.extend(results.iter().map(valtype));
        leb(&mut func_idx, i);
        name(&mut exports, export);
        exports.push(0x00);
        leb(&mut exports, i);
        code.extend([3, 0, 0x00, 0x0b]); // size 3: no locals, unreachable, end
    }
    name(&mut exports, "memory");
    exports.extend([0x02, 0]);
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    section(&mut m, 1, funcs.len(), &types);
    section(&mut m, 3, funcs.len(), &func_idx);
    section(&mut m, 5, 1, &[0x00, 1]);
    section(&mut m, 7, funcs.len() + 1, &exports);
    section(&mut m, 10, funcs.len(), &code);
    Ok(m)
}

/// A filter component (its functions trap); `tag` makes its bytes, and so its hash, distinct.
fn filter_component(tag: u32) -> anyhow::Result<Vec<u8>> {
    let mut bytes = componentize(&filter_core_module()?)?;
    let mut custom = Vec::new();
    name(&mut custom, "weir-test");
    custom.extend(tag.to_le_bytes());
    bytes.push(0);
    leb(&mut bytes, custom.len());
    bytes.extend(custom);
    Ok(bytes)
}

/// A fresh directory under the system's temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "weir-{name}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn runtime(cache: &Path) -> anyhow::Result<Runtime> {
    Runtime::new(RuntimeOptions {
        cache_dir: Some(cache.to_path_buf()),
        max_instances: 16,
        ..Default::default()
    })
}

fn chmod(path: &Path, mode: u32) -> anyhow::Result<()> {
    Ok(std::fs::set_permissions(
        path,
        std::fs::Permissions::from_mode(mode),
    )?)
}

/// Whether loading `bytes` with a fresh runtime on `cache` had to compile.
fn compiles(cache: &Path, bytes: &[u8]) -> anyhow::Result<bool> {
    Ok(runtime(cache)?.load("f", bytes)?.compiled)
}

#[test]
fn the_cache_directory_is_created_private() -> anyhow::Result<()> {
    let tmp = TempDir::new("cache-mode");
    let dir = tmp.0.join("a/b/filters");
    let bytes = filter_component(0)?;
    assert!(compiles(&dir, &bytes)?, "first load compiles");
    let mode = std::fs::metadata(&dir)?.permissions().mode() & 0o777;
    assert_eq!(mode & 0o077, 0, "mode {mode:o}");
    assert!(!compiles(&dir, &bytes)?, "a private cache is used");
    Ok(())
}

#[test]
fn a_cache_others_can_write_to_is_not_loaded_from() -> anyhow::Result<()> {
    let tmp = TempDir::new("cache-shared");
    let dir = tmp.0.join("filters");
    let bytes = filter_component(1)?;
    assert!(compiles(&dir, &bytes)?);
    assert!(!compiles(&dir, &bytes)?);
    for mode in [0o777, 0o775, 0o757, 0o722, 0o1777] {
        chmod(&dir, mode)?;
        assert!(compiles(&dir, &bytes)?, "dir mode {mode:o}: loaded from it");
    }
    chmod(&dir, 0o700)?;
    assert!(!compiles(&dir, &bytes)?);
    // A cache file others can write to (planted, or left from when the directory was open).
    let file = std::fs::read_dir(&dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .ok_or_else(|| anyhow::anyhow!("no cache file in {}", dir.display()))?;
    chmod(&file, 0o666)?;
    assert!(compiles(&dir, &bytes)?, "file mode 666: loaded from it");
    assert!(!compiles(&dir, &bytes)?, "rewritten privately");
    // Another user's directory (only root can make one here).
    if rustix::process::geteuid().is_root() {
        std::os::unix::fs::chown(&dir, Some(65534), None)?;
        assert!(
            compiles(&dir, &bytes)?,
            "another user's cache was loaded from"
        );
    }
    Ok(())
}

#[test]
fn ownership_rules() {
    let cases = [
        (1000, 0o40700, 1000, true),
        (1000, 0o40755, 1000, true),
        (1000, 0o40500, 1000, true),
        (1000, 0o40770, 1000, false),
        (1000, 0o40707, 1000, false),
        (1000, 0o40720, 1000, false),
        (1000, 0o40702, 1000, false),
        (1000, 0o41777, 1000, false),
        (0, 0o40700, 1000, false),
        (1001, 0o40700, 1000, false),
        (1000, 0o40700, 0, false),
    ];
    for (uid, mode, euid, ok) in cases {
        assert_eq!(
            ownership_problem(uid, mode, euid).is_ok(),
            ok,
            "uid {uid} mode {mode:o} euid {euid}"
        );
    }
}

#[test]
fn artifacts_of_another_engine_config_are_not_loaded() -> anyhow::Result<()> {
    let tmp = TempDir::new("cache-engines");
    let dir = tmp.0.join("filters");
    let bytes = filter_component(2)?;
    let other = |dir: &Path| {
        Runtime::with_engine_config(
            RuntimeOptions {
                cache_dir: Some(dir.to_path_buf()),
                max_instances: 16,
                ..Default::default()
            },
            |c| {
                c.cranelift_opt_level(wasmtime::OptLevel::None);
            },
        )
    };
    assert_ne!(
        runtime(&dir)?.inner.engine_tag,
        other(&dir)?.inner.engine_tag
    );
    assert!(compiles(&dir, &bytes)?);
    assert!(
        other(&dir)?.load("f", &bytes)?.compiled,
        "loaded another engine's artifact"
    );
    assert!(
        !other(&dir)?.load("f", &bytes)?.compiled,
        "its own artifact is cached"
    );
    assert!(
        !compiles(&dir, &bytes)?,
        "the first engine's artifact was overwritten by the other's"
    );
    Ok(())
}

#[test]
fn unused_modules_do_not_pile_up_in_memory() -> anyhow::Result<()> {
    let rt = Runtime::new(RuntimeOptions {
        max_instances: 16,
        ..Default::default()
    })?;
    let in_use = rt.load("f", &filter_component(100)?)?;
    for tag in 0..KEEP_UNUSED as u32 * 3 {
        rt.load("f", &filter_component(tag)?)?;
        assert!(
            rt.modules_in_memory() <= KEEP_UNUSED + 2,
            "{} modules after {tag} uploads",
            rt.modules_in_memory()
        );
    }
    assert!(
        Arc::ptr_eq(&rt.load("f", &filter_component(100)?)?, &in_use),
        "a module in use stays"
    );
    Ok(())
}

#[test]
fn the_disk_cache_is_bounded() -> anyhow::Result<()> {
    let tmp = TempDir::new("cache-files");
    let dir = tmp.0.join("filters");
    open_private_dir(&dir).map_err(anyhow::Error::msg)?;
    for i in 0..KEEP_CACHED_FILES + 10 {
        std::fs::write(dir.join(format!("{i:04}.cwasm")), b"x")?;
    }
    std::fs::write(dir.join("other.txt"), b"x")?;
    prune_cache(&dir);
    let left: Vec<String> = std::fs::read_dir(&dir)?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left.len(), KEEP_CACHED_FILES + 1, "{left:?}");
    assert!(
        left.iter().any(|f| f == "other.txt"),
        "only .cwasm files go"
    );
    Ok(())
}

/// Instantiation gets 20 times `time_per_phase`: the config caps it at 60 s, and the product
/// saturates for an embedder that passes anything larger.
#[tokio::test]
async fn a_huge_time_per_phase_does_not_overflow() -> anyhow::Result<()> {
    let rt = Runtime::new(RuntimeOptions {
        max_instances: 16,
        ..Default::default()
    })?;
    let module = rt.load("f", &filter_component(3)?)?;
    for t in [
        Duration::MAX,
        Duration::from_secs(u64::MAX / 10),
        Duration::from_secs(60),
    ] {
        let spec = crate::FilterSpec {
            filter: "f".into(),
            config: "{}".into(),
            memory: 1 << 20,
            time_per_phase: t,
            max_body: 1 << 10,
            max_instances: 1,
            on_error: weir_config::FailurePolicy::FailClosed,
            grants: Default::default(),
        };
        // The test component traps in `configure`: an error, not a panic.
        let e = crate::InstancePool::new(&rt, module.clone(), spec)
            .await
            .err();
        assert!(
            e.as_deref().is_some_and(|e| e.contains("configuring")),
            "{t:?}: {e:?}"
        );
    }
    Ok(())
}

/// A filter built against another version of the contract is refused at load with a message
/// naming both versions, whether it comes as a component or as a Go/AssemblyScript core module.
#[test]
fn a_filter_of_another_contract_version_is_refused_naming_both() -> anyhow::Result<()> {
    assert!(
        FILTER_WIT.contains(&format!("package weir:filter@{CONTRACT_VERSION};")),
        "CONTRACT_VERSION is the WIT's"
    );
    let dir = TempDir::new("contract");
    let rt = runtime(&dir.0)?;
    let current = format!("package weir:filter@{CONTRACT_VERSION};");
    for other in ["0.2.0", "1.0.0", "0.0.9"] {
        let wit = FILTER_WIT.replace(&current, &format!("package weir:filter@{other};"));
        let core = filter_core_module_for(&wit)?;
        let component = componentize_with(&core, &wit)?;
        for (what, bytes) in [("component", component), ("core module", core)] {
            let e = format!("{:#}", rt.load("f", &bytes).err().context(what)?);
            assert!(
                e.contains(&format!("built against weir:filter@{other}"))
                    && e.contains(&format!("serves weir:filter@{CONTRACT_VERSION}")),
                "{what} of {other}: {e}"
            );
        }
    }
    // And the current version loads.
    rt.load("f", &filter_component(7)?)?;
    Ok(())
}
