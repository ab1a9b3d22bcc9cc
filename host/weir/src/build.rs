//! `weir filter build`: turns a filter project into a component ready to load or push.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

/// The wasm target Rust filters are built for; it produces components directly.
const RUST_TARGET: &str = "wasm32-wasip2";

/// What a language's build produced: a component (Rust) or a core module (Go, AssemblyScript),
/// and the default output name.
struct Built {
    wasm: Vec<u8>,
    name: String,
}

/// Builds the filter project at `dir` and writes the component to `out` (default: `NAME.wasm`
/// in the current directory). Returns the output path.
pub fn build(dir: &Path, out: Option<&Path>, debug: bool) -> anyhow::Result<PathBuf> {
    let built = if dir.join("Cargo.toml").is_file() {
        build_rust(dir, debug)?
    } else if dir.join("go.mod").is_file() {
        build_go(dir, debug)?
    } else if dir.join("package.json").is_file() {
        build_assemblyscript(dir)?
    } else {
        bail!(
            "{}: no Cargo.toml, go.mod or package.json here: give the folder of a filter project",
            dir.display()
        )
    };
    let out = out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(format!("{}.wasm", built.name)));
    write_filter(&built.wasm, &out)?;
    Ok(out)
}

/// The languages filters can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Go,
    #[value(alias = "as")]
    Assemblyscript,
}

impl Lang {
    fn sdk_dir(self) -> &'static str {
        match self {
            Lang::Rust => "rust",
            Lang::Go => "go",
            Lang::Assemblyscript => "assemblyscript",
        }
    }
}

/// The default output name of a Go or AssemblyScript project: its folder's name.
fn folder_name(dir: &Path) -> anyhow::Result<String> {
    dir.canonicalize()?
        .file_name()
        .map(|n| n.to_string_lossy().replace('-', "_"))
        .context("the project folder has no name")
}

/// Writes `wasm` as a filter component (a core module is componentized first), and says so.
fn write_filter(wasm: &[u8], out: &Path) -> anyhow::Result<()> {
    use weir_filters::componentize::{WasmKind, componentize, wasm_kind};
    let component = match wasm_kind(wasm) {
        WasmKind::Component => std::borrow::Cow::Borrowed(wasm),
        WasmKind::CoreModule => componentize(wasm)?.into(),
        WasmKind::NotWasm => bail!("the build produced no WebAssembly"),
    };
    std::fs::write(out, &component).with_context(|| format!("cannot write {}", out.display()))?;
    eprintln!(
        "weir: built {} ({} KiB)",
        out.display(),
        component.len().div_ceil(1024)
    );
    Ok(())
}

/// `weir filter componentize IN -o OUT`.
pub fn componentize_file(input: &Path, out: &Path) -> anyhow::Result<()> {
    let core = std::fs::read(input).with_context(|| format!("cannot read {}", input.display()))?;
    let component = weir_filters::componentize::componentize(&core)
        .with_context(|| input.display().to_string())?;
    write_filter(&component, out)
}

/// Runs a build tool, failing with its name when it is missing or fails.
fn run_tool(mut cmd: Command, what: &str, missing_hint: &str) -> anyhow::Result<()> {
    match cmd.status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => bail!("{what} failed ({s})"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("{what}: {:?} not found; {missing_hint}", cmd.get_program())
        }
        Err(e) => Err(e).with_context(|| format!("cannot run {what}")),
    }
}

/// A Go module: `go build` for `GOOS=wasip1` as a reactor, then componentized.
fn build_go(dir: &Path, debug: bool) -> anyhow::Result<Built> {
    let core = std::env::temp_dir().join(format!("weir-go-{}.wasm", std::process::id()));
    let mut cmd = Command::new(go_binary());
    cmd.current_dir(dir)
        .args(["build", "-buildmode=c-shared", "-o"])
        .arg(&core)
        .env("GOOS", "wasip1")
        .env("GOARCH", "wasm");
    if debug {
        cmd.args(["-gcflags", "all=-N -l"]);
    } else {
        cmd.arg("-trimpath");
    }
    if std::env::var_os("GOTOOLCHAIN").is_none() {
        cmd.env("GOTOOLCHAIN", "local");
    }
    cmd.arg(".");
    run_tool(
        cmd,
        "go build",
        "Go >= 1.24 is needed (scripts/lib.sh need_go installs it into .tools/bin; or set WEIR_GO)",
    )?;
    let wasm = std::fs::read(&core);
    let _ = std::fs::remove_file(&core);
    Ok(Built {
        wasm: wasm.context("go build wrote no module")?,
        name: folder_name(dir)?,
    })
}

/// The Go to run: `WEIR_GO`, else `go` on `PATH`, else the one the project's scripts install
/// (`.tools/bin/go` in the source tree this binary was built from).
fn go_binary() -> std::ffi::OsString {
    if let Some(go) = std::env::var_os("WEIR_GO") {
        return go;
    }
    let on_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("go").is_file()));
    let installed = source_root().join(".tools/bin/go");
    if !on_path && installed.is_file() {
        return installed.into_os_string();
    }
    "go".into()
}

/// An AssemblyScript project: `npm run build` must write `build/filter.wasm` (the SDK's
/// template and asc config do), which is then componentized. A project without its Node
/// packages (no `node_modules/assemblyscript` here or above) gets `npm install` first.
fn build_assemblyscript(dir: &Path) -> anyhow::Result<Built> {
    let abs = dir.canonicalize()?;
    if !abs
        .ancestors()
        .any(|d| d.join("node_modules/assemblyscript").is_dir())
    {
        eprintln!(
            "weir: no node_modules: running npm install in {}",
            dir.display()
        );
        let mut install = Command::new("npm");
        install
            .current_dir(dir)
            .args(["install", "--no-audit", "--no-fund", "--loglevel=error"]);
        run_tool(install, "npm install", "Node.js and npm are needed")?;
    }
    let mut cmd = Command::new("npm");
    cmd.current_dir(dir).args(["run", "--silent", "build"]);
    run_tool(cmd, "npm run build", "Node.js and npm are needed")?;
    let built = dir.join("build").join("filter.wasm");
    let wasm =
        std::fs::read(&built).with_context(|| format!("{} was not produced", built.display()))?;
    Ok(Built {
        wasm,
        name: folder_name(dir)?,
    })
}

/// The source tree this binary was built from.
fn source_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Where the SDKs are: `--sdk`/`WEIR_SDK`, else the source tree this binary was built from.
fn sdk_root(sdk: Option<&Path>) -> PathBuf {
    sdk.map(Path::to_path_buf)
        .unwrap_or_else(|| source_root().join("sdk"))
}

/// `weir filter new --lang L PATH`: creates PATH (like `cargo new`; its last component is the
/// filter's name) from the SDK's template (listed in `template/FILES` as
/// `template-file -> output-file`), filling in `{{name}}`, `{{crate}}` and `{{sdk}}`.
pub fn scaffold(dest: &Path, lang: Lang, sdk: Option<&Path>) -> anyhow::Result<()> {
    let name = dest.file_name().and_then(|n| n.to_str()).with_context(|| {
        format!(
            "{}: give a path that ends in the filter's name",
            dest.display()
        )
    })?;
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name.starts_with(|c: char| c.is_ascii_lowercase());
    if !valid {
        bail!(
            "{name:?}: a filter name is lowercase letters, digits, '-' and '_', starting with a letter"
        );
    }
    if dest.exists() {
        bail!("{} already exists", dest.display());
    }
    let sdk = sdk_root(sdk)
        .join(lang.sdk_dir())
        .canonicalize()
        .context("cannot find Weir's SDK (give --sdk PATH/TO/weir/sdk)")?;
    let template = sdk.join("template");
    let files = std::fs::read_to_string(template.join("FILES"))
        .with_context(|| format!("cannot read {}", template.join("FILES").display()))?;
    let fill = |text: &str| {
        text.replace("{{name}}", name)
            .replace("{{crate}}", &name.replace('-', "_"))
            .replace("{{sdk}}", &sdk.to_string_lossy())
    };
    for line in files
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (from, to) = line
            .split_once("->")
            .with_context(|| format!("bad line in template/FILES: {line:?}"))?;
        let text = std::fs::read_to_string(template.join(from.trim()))
            .with_context(|| format!("cannot read template file {}", from.trim()))?;
        let path = dest.join(to.trim());
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, fill(&text))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let next = match lang {
        Lang::Rust => "cargo test",
        Lang::Go => "go test ./...",
        Lang::Assemblyscript => "npm install && npm test",
    };
    let at = dest.display();
    println!(
        "created {at}/ ({lang:?} filter {name})\n  cd {at} && {next}\n  weir filter build {at} -o {name}.wasm"
    );
    Ok(())
}

fn build_rust(dir: &Path, debug: bool) -> anyhow::Result<Built> {
    let manifest = dir.join("Cargo.toml").canonicalize()?;
    let meta = Command::new("cargo")
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--manifest-path",
        ])
        .arg(&manifest)
        .output()
        .context("cannot run cargo")?;
    if !meta.status.success() {
        bail!(
            "cargo metadata failed:\n{}",
            String::from_utf8_lossy(&meta.stderr)
        );
    }
    let meta: serde_json::Value = serde_json::from_slice(&meta.stdout)?;
    let package = meta["packages"]
        .as_array()
        .and_then(|ps| {
            ps.iter()
                .find(|p| p["manifest_path"].as_str().map(Path::new) == Some(manifest.as_path()))
        })
        .context("the crate is not in its own cargo metadata")?;
    let name = package["name"].as_str().context("package name")?;
    let target_dir = PathBuf::from(
        meta["target_directory"]
            .as_str()
            .context("target directory")?,
    );

    ensure_rust_target()?;
    let mut cmd = Command::new("cargo");
    cmd.args([
        "build",
        "--target",
        RUST_TARGET,
        "-p",
        name,
        "--manifest-path",
    ])
    .arg(&manifest);
    if !debug {
        cmd.arg("--release");
    }
    run_tool(cmd, "cargo build", "the Rust toolchain is needed")?;
    let built = target_dir
        .join(RUST_TARGET)
        .join(if debug { "debug" } else { "release" })
        .join(format!("{}.wasm", name.replace('-', "_")));
    let wasm = std::fs::read(&built).with_context(|| {
        format!(
            "{} was not produced (is the crate a cdylib?)",
            built.display()
        )
    })?;
    Ok(Built {
        wasm,
        name: name.replace('-', "_"),
    })
}

/// Installs the wasm target with rustup when it is missing.
fn ensure_rust_target() -> anyhow::Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    match installed {
        Ok(o)
            if String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == RUST_TARGET) =>
        {
            Ok(())
        }
        Ok(_) => {
            eprintln!("weir: installing the {RUST_TARGET} target with rustup");
            let ok = Command::new("rustup")
                .args(["target", "add", RUST_TARGET])
                .status()?
                .success();
            if ok {
                Ok(())
            } else {
                bail!("rustup target add {RUST_TARGET} failed")
            }
        }
        // No rustup: maybe the target comes with the toolchain some other way; let cargo say.
        Err(_) => Ok(()),
    }
}
