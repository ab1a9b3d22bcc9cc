//! Config errors: every one names the file, the line and the field.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::LineIndex;

/// One problem in a config, at a field path such as `routes[2].cluster`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// Field path, `.` between keys and `[i]` for list items; empty for the whole file.
    pub path: String,
    /// What is wrong, lowercase, with a suggestion when there is one.
    pub message: String,
}

impl Issue {
    /// An issue at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Issue {
        Issue {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Why a config could not be loaded.
#[derive(Debug, Clone)]
pub enum ConfigError {
    /// The file could not be read.
    Io {
        /// The file.
        file: PathBuf,
        /// The OS error.
        message: String,
    },
    /// YAML syntax or schema (types, unknown keys, missing fields).
    Parse {
        /// The file.
        file: PathBuf,
        /// 1-based line, when known.
        line: Option<usize>,
        /// The problem.
        issue: Issue,
    },
    /// The file parsed but does not make sense (unknown names, conflicting options, files that
    /// do not load).
    Invalid {
        /// The file.
        file: PathBuf,
        /// Where fields stand, to put a line on each issue.
        lines: LineIndex,
        /// Every problem found, in file order.
        issues: Vec<Issue>,
    },
}

impl ConfigError {
    /// The problems, each with its line (when known).
    pub fn issues(&self) -> Vec<(Option<usize>, Issue)> {
        match self {
            ConfigError::Io { message, .. } => vec![(None, Issue::new("", message.clone()))],
            ConfigError::Parse { line, issue, .. } => vec![(*line, issue.clone())],
            ConfigError::Invalid { lines, issues, .. } => {
                let mut v: Vec<_> = issues
                    .iter()
                    .map(|i| (lines.line_of(&i.path), i.clone()))
                    .collect();
                v.sort_by_key(|(line, _)| *line);
                v
            }
        }
    }

    fn file(&self) -> &Path {
        match self {
            ConfigError::Io { file, .. }
            | ConfigError::Parse { file, .. }
            | ConfigError::Invalid { file, .. } => file,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file().display();
        for (n, (line, issue)) in self.issues().into_iter().enumerate() {
            if n > 0 {
                f.write_str("\n")?;
            }
            match line {
                Some(line) => write!(f, "{file}:{line}: ")?,
                None => write!(f, "{file}: ")?,
            }
            if !issue.path.is_empty() {
                write!(f, "{}: ", issue.path)?;
            }
            f.write_str(&issue.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Turns serde's message (`unknown field `clustr`, expected one of ...`) at its path into an
/// issue at `routes[0].clustr`, with a suggestion.
pub(crate) fn from_serde(
    file: &Path,
    lines: &LineIndex,
    e: &serde_path_to_error::Error<serde_json::Error>,
) -> ConfigError {
    let mut path = e.path().to_string();
    if path == "." {
        path.clear();
    }
    let mut message = e.inner().to_string();
    let ticked: Vec<&str> = message.split('`').skip(1).step_by(2).collect();
    let kind = ["unknown field", "unknown variant"]
        .into_iter()
        .find(|k| message.starts_with(k));
    if let (Some(kind), Some((bad, expected))) = (kind, ticked.split_first()) {
        let bad = bad.to_string();
        let mut msg = format!("{kind} {bad:?}");
        if let Some(s) = crate::did_you_mean(&bad, expected.iter().copied()) {
            msg.push_str(&format!(" (did you mean {s:?}?)"));
        } else if !expected.is_empty() {
            let list: Vec<String> = expected.iter().map(|s| format!("{s:?}")).collect();
            msg.push_str(&format!(" (expected one of {})", list.join(", ")));
        }
        // The path names the unknown field itself when serde got as far as its value.
        let named = path == bad || path.ends_with(&format!(".{bad}"));
        if kind == "unknown field" && !named {
            path = if path.is_empty() {
                bad
            } else {
                format!("{path}.{bad}")
            };
        }
        message = msg;
    }
    message = without_values(&message);
    let line = lines.line_of(&path);
    ConfigError::Parse {
        file: file.to_path_buf(),
        line,
        issue: Issue { path, message },
    }
}

/// serde's `invalid type: string "…", expected …` (and `invalid value: …`) quotes the value it
/// got; for a field that holds a secret (or a file that is not YAML at all) that value must not
/// reach a terminal, a log or the admin API. The kind of value is kept, the value dropped.
pub(crate) fn without_values(message: &str) -> String {
    let Some((head, rest)) = ["invalid type: ", "invalid value: "]
        .into_iter()
        .find_map(|p| message.strip_prefix(p).map(|r| (p, r)))
    else {
        return message.to_string();
    };
    if let Some(quoted) = rest.strip_prefix("string \"") {
        // The value is Debug-quoted: skip escapes up to the closing quote. No closing quote (the
        // message was cut): drop everything after the kind.
        let mut chars = quoted.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => return format!("{head}string{}", &quoted[i + 1..]),
                _ => {}
            }
        }
        return format!("{head}string");
    }
    for kind in ["boolean", "integer", "floating point", "character"] {
        if let Some(ticked) = rest.strip_prefix(kind).and_then(|r| r.strip_prefix(" `")) {
            return match ticked.find('`') {
                Some(end) => format!("{head}{kind}{}", &ticked[end + 1..]),
                None => format!("{head}{kind}"),
            };
        }
    }
    message.to_string()
}
