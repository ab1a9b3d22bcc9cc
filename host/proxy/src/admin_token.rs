//! The generated admin token: when the config sets no `admin.token`, writes to the admin API
//! still need one. It is kept in a file only this user can read (beside the config by default),
//! so the CLI on the same machine finds it and a web page or another user cannot.

use std::io::{Read as _, Write as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use weir_config::LoadedConfig;

/// A token and the file it is kept in.
#[derive(Clone)]
pub(crate) struct Generated {
    pub token: String,
    pub file: PathBuf,
}

/// Reads or creates the generated token for a config without `admin.token`.
pub(crate) fn generated(loaded: &LoadedConfig) -> Result<Generated, String> {
    load_or_create(&file_for(loaded))
}

/// Where a config without `admin.token` keeps its generated token.
pub(crate) fn file_for(loaded: &LoadedConfig) -> PathBuf {
    let name = loaded
        .config
        .admin
        .token_file
        .clone()
        .unwrap_or_else(|| PathBuf::from(weir_config::DEFAULT_ADMIN_TOKEN_FILE));
    loaded.resolve(&name)
}

/// Reads the token in `file`, or creates the file (mode 0600) with a new random token. A file
/// that another user owns, that others may read or write, or that is not a regular file is
/// refused: its token may be known to someone else.
pub(crate) fn load_or_create(file: &Path) -> Result<Generated, String> {
    let shown = file.display();
    // `create_new` never follows a symlink and never truncates: a file that appears meanwhile
    // is read like one that was there.
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
    {
        Ok(mut f) => {
            let token = random_token()?;
            f.write_all(format!("{token}\n").as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(|e| format!("cannot write the admin token file {shown}: {e}"))?;
            return Ok(Generated {
                token,
                file: file.to_path_buf(),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(format!(
                "cannot create the admin token file {shown}: {e} (set admin.token, or \
                 admin.token_file to a writable place)"
            ));
        }
    }
    let f = std::fs::File::open(file)
        .map_err(|e| format!("cannot open the admin token file {shown}: {e}"))?;
    // Checked on the open file, not the path: what is read is what was checked.
    let meta = f
        .metadata()
        .map_err(|e| format!("cannot inspect the admin token file {shown}: {e}"))?;
    private_problem(
        meta.is_file(),
        meta.uid(),
        meta.mode(),
        rustix::process::geteuid().as_raw(),
    )
    .map_err(|p| format!("the admin token file {shown} {p}; remove it to get a new token"))?;
    let mut text = String::new();
    f.take(1024)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read the admin token file {shown}: {e}"))?;
    let token = text.trim();
    if token.len() < 32 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "the admin token file {shown} does not hold a token (hex digits); remove it to get \
             a new one"
        ));
    }
    Ok(Generated {
        token: token.to_string(),
        file: file.to_path_buf(),
    })
}

/// Why a file with this type, owner and mode cannot hold a secret only `euid` knows.
fn private_problem(regular: bool, uid: u32, mode: u32, euid: u32) -> Result<(), String> {
    if !regular {
        return Err("is not a regular file".into());
    }
    if uid != euid {
        return Err(format!(
            "is owned by uid {uid}, not by this process's uid {euid}"
        ));
    }
    if mode & 0o077 != 0 {
        return Err(format!(
            "can be read or written by other users (mode {:o}; want 600)",
            mode & 0o777
        ));
    }
    Ok(())
}

/// 32 bytes from the OS CSPRNG, as 64 hex digits.
fn random_token() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness for the admin token: {e}"))?;
    Ok(hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("weir-token-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn creates_a_private_random_token_and_reuses_it() {
        let d = scratch("reuse");
        let f = d.join("tok");
        let a = load_or_create(&f).unwrap();
        assert_eq!(a.token.len(), 64);
        assert!(a.token.bytes().all(|b| b.is_ascii_hexdigit()));
        let meta = std::fs::metadata(&f).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(load_or_create(&f).unwrap().token, a.token, "reused");
        let other = load_or_create(&d.join("tok2")).unwrap();
        assert_ne!(other.token, a.token, "random");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn refuses_files_others_can_read_or_that_hold_no_token() {
        let d = scratch("refuse");
        let f = d.join("tok");
        load_or_create(&f).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_or_create(&f).err().unwrap();
        assert!(e.contains("mode 644; want 600"), "{e}");
        assert!(!e.contains(&std::fs::read_to_string(&f).unwrap().trim().to_string()));

        let empty = d.join("empty");
        std::fs::write(&empty, "").unwrap();
        std::fs::set_permissions(&empty, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(
            load_or_create(&empty)
                .err()
                .unwrap()
                .contains("does not hold a token")
        );
        let dir = d.join("adir");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(
            load_or_create(&dir)
                .err()
                .unwrap()
                .contains("not a regular file")
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn only_a_regular_file_of_ours_that_nobody_else_can_read_is_private() {
        let cases = [
            (true, 1000, 0o100600, 1000, true),
            (true, 1000, 0o100400, 1000, true),
            (true, 1000, 0o100640, 1000, false),
            (true, 1000, 0o100604, 1000, false),
            (true, 1000, 0o100620, 1000, false),
            (true, 0, 0o100600, 1000, false),
            (false, 1000, 0o040700, 1000, false),
        ];
        for (regular, uid, mode, euid, ok) in cases {
            assert_eq!(
                private_problem(regular, uid, mode, euid).is_ok(),
                ok,
                "regular {regular} uid {uid} mode {mode:o} euid {euid}"
            );
        }
    }
}
