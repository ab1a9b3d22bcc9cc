//! `weir filter build`: turns a filter project into a component ready to load or push.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

/// The wasm target Rust filters are built for; it produces components directly.
const RUST_TARGET: &str = "wasm32-wasip2";

/// Builds the filter project at `dir` and writes the component to `out` (default: `NAME.wasm`
/// in the current directory). Returns the output path.
pub fn build(dir: &Path, out: Option<&Path>, debug: bool) -> anyhow::Result<PathBuf> {
    if dir.join("Cargo.toml").is_file() {
        return build_rust(dir, out, debug);
    }
    if dir.join("go.mod").is_file() || dir.join("package.json").is_file() {
        bail!(
            "{}: Go and AssemblyScript filters are not supported yet (only Rust crates)",
            dir.display()
        );
    }
    bail!(
        "{}: no Cargo.toml here: give the folder of a filter crate",
        dir.display()
    )
}

fn build_rust(dir: &Path, out: Option<&Path>, debug: bool) -> anyhow::Result<PathBuf> {
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
    let status = cmd.status().context("cannot run cargo build")?;
    if !status.success() {
        bail!("cargo build of {name} failed");
    }
    let built = target_dir
        .join(RUST_TARGET)
        .join(if debug { "debug" } else { "release" })
        .join(format!("{}.wasm", name.replace('-', "_")));
    let bytes = std::fs::read(&built).with_context(|| {
        format!(
            "{} was not produced (is the crate a cdylib?)",
            built.display()
        )
    })?;
    if bytes.get(4..8) != Some(&[0x0d, 0x00, 0x01, 0x00]) {
        bail!("{} is a core module, not a component", built.display());
    }
    let out = out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(format!("{}.wasm", name.replace('-', "_"))));
    std::fs::write(&out, &bytes).with_context(|| format!("cannot write {}", out.display()))?;
    eprintln!(
        "weir: built {} ({} KiB)",
        out.display(),
        bytes.len().div_ceil(1024)
    );
    Ok(out)
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
