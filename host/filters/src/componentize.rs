//! Turning a core wasm module built by the Go or AssemblyScript SDK into a component.
//!
//! Go and AssemblyScript cannot emit components, so their SDKs emit a core module that follows
//! the canonical ABI of `wit/filter.wit` (see `sdk/ABI.md`). Here the WIT is embedded into it
//! (with the string encoding the module declares) and `wit-component` wraps it, adding the WASI
//! preview1 reactor adapter when the module imports `wasi_snapshot_preview1` (Go does). The
//! same code backs `weir filter componentize` and the loader.

use anyhow::{Context as _, bail};
use wasmparser::{Parser, Payload};
use wit_component::{ComponentEncoder, StringEncoding};
use wit_parser::Resolve;

/// The WIT every filter targets, compiled into the binary.
pub const FILTER_WIT: &str = include_str!("../../../wit/filter.wit");

/// The version of the `weir:filter` contract this proxy serves (`package weir:filter@...` in
/// [`FILTER_WIT`]). Additions that old filters cannot notice (a new interface, a new function)
/// keep it; a change that breaks a built filter bumps it.
pub const CONTRACT_VERSION: &str = "0.1.0";

/// Refuses a filter whose imports or exports name another version of the `weir:filter`
/// contract, with a message saying which version it was built against. Without this, wasmtime
/// reports a missing import or export, which does not say that the filter and the proxy
/// disagree on the contract.
pub fn check_contract<'a>(names: impl IntoIterator<Item = &'a str>) -> anyhow::Result<()> {
    for name in names {
        let Some(rest) = name.strip_prefix("weir:filter/") else {
            continue;
        };
        // `interface@version`, then for core exports `#function`.
        let rest = rest.split('#').next().unwrap_or(rest);
        let version = rest.split_once('@').map(|(_, v)| v);
        if version == Some(CONTRACT_VERSION) {
            continue;
        }
        let built = version.map_or_else(
            || "an unversioned weir:filter".to_owned(),
            |v| format!("weir:filter@{v}"),
        );
        bail!(
            "this filter was built against {built} (it names {name:?}); this proxy serves \
             weir:filter@{CONTRACT_VERSION}: rebuild the filter with the SDK that matches this \
             proxy, or run a proxy that serves its version"
        );
    }
    Ok(())
}

/// The custom section by which a module declares its string encoding (`utf16`); absent means
/// UTF-8.
pub const STRING_ENCODING_SECTION: &str = "weir:string-encoding";

/// What kind of wasm binary `bytes` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WasmKind {
    Component,
    CoreModule,
    NotWasm,
}

/// Tells a component from a core module by the header's layer field.
pub fn wasm_kind(bytes: &[u8]) -> WasmKind {
    if Parser::is_component(bytes) {
        WasmKind::Component
    } else if Parser::is_core_wasm(bytes) {
        WasmKind::CoreModule
    } else {
        WasmKind::NotWasm
    }
}

/// What the module says about itself.
struct CoreInfo {
    encoding: StringEncoding,
    imports_wasi: bool,
    /// Import modules and export names (for the contract version).
    names: Vec<String>,
}

fn inspect(bytes: &[u8]) -> anyhow::Result<CoreInfo> {
    let mut info = CoreInfo {
        encoding: StringEncoding::UTF8,
        imports_wasi: false,
        names: Vec::new(),
    };
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.context("invalid core module")? {
            Payload::CustomSection(s) if s.name() == STRING_ENCODING_SECTION => {
                info.encoding = match s.data() {
                    b"utf8" | b"utf-8" => StringEncoding::UTF8,
                    b"utf16" | b"utf-16" => StringEncoding::UTF16,
                    other => bail!(
                        "custom section {STRING_ENCODING_SECTION:?} says {:?}; expected \"utf8\" or \"utf16\"",
                        String::from_utf8_lossy(other)
                    ),
                };
            }
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let import = import?;
                    if import.module == "wasi_snapshot_preview1" {
                        info.imports_wasi = true;
                    }
                    info.names.push(import.module.to_owned());
                }
            }
            Payload::ExportSection(reader) => {
                for export in reader {
                    info.names.push(export?.name.to_owned());
                }
            }
            _ => {}
        }
    }
    Ok(info)
}

/// Wraps a core module into a filter component. Errors name what the module got wrong (a
/// missing export, an import outside the WIT, a signature that does not match).
pub fn componentize(core: &[u8]) -> anyhow::Result<Vec<u8>> {
    if wasm_kind(core) == WasmKind::CoreModule {
        check_contract(inspect(core)?.names.iter().map(String::as_str))?;
    }
    componentize_with(core, FILTER_WIT)
}

/// [`componentize`] against the WIT text `wit` (tests build filters of other contract versions).
pub(crate) fn componentize_with(core: &[u8], wit: &str) -> anyhow::Result<Vec<u8>> {
    match wasm_kind(core) {
        WasmKind::CoreModule => {}
        WasmKind::Component => bail!("already a component"),
        WasmKind::NotWasm => bail!("not a WebAssembly binary"),
    }
    let info = inspect(core)?;
    let mut resolve = Resolve::default();
    let pkg = resolve
        .push_str("filter.wit", wit)
        .context("parsing the built-in filter WIT")?;
    let world = resolve.select_world(&[pkg], Some("filter-world"))?;
    let mut module = core.to_vec();
    wit_component::embed_component_metadata(&mut module, &resolve, world, info.encoding)?;
    let mut encoder = ComponentEncoder::default().validate(true).module(&module)?;
    if info.imports_wasi {
        encoder = encoder.adapter(
            "wasi_snapshot_preview1",
            wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
        )?;
    }
    encoder
        .encode()
        .map_err(|e| anyhow::anyhow!("cannot make a filter component of this module: {e:#}"))
}
