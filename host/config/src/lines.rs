//! YAML text to a JSON value in one pass (yaml-rust2's events), indexing as it goes the line
//! every field path (`routes[2].match.host`) stands on, so errors found by serde or after
//! parsing (unknown cluster, bad certificate) still point into the file.
//!
//! Plain scalars are typed by the YAML 1.2 core schema (`true`, `null`, `8080`, `1.5`; `on` and
//! `yes` stay strings); quoted and block scalars are strings; anchors and aliases are resolved.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;
use yaml_rust2::parser::{Event, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Field path → 1-based line number.
#[derive(Debug, Clone, Default)]
pub struct LineIndex {
    lines: Arc<HashMap<String, usize>>,
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, next: usize },
}

#[derive(Default)]
struct Collector {
    stack: Vec<Frame>,
    lines: HashMap<String, usize>,
    /// The value being built: open mappings and sequences, innermost last.
    nodes: Vec<Node>,
    /// Anchor id → its value and size (values in it), for aliases.
    anchors: HashMap<usize, (Value, usize)>,
    /// Values built so far, counting every alias's copy: bounded, so a few lines of aliases
    /// cannot expand into gigabytes (a "billion laughs").
    size: usize,
    /// The document's value, once complete.
    done: Option<Value>,
    /// The first problem a syntax check cannot see (a duplicate key): line and message.
    problem: Option<(usize, String)>,
}

/// Most values a config may hold, alias copies included.
const MAX_VALUES: usize = 1_000_000;
/// Deepest nesting of mappings and sequences (serde_json's own limit for JSON text).
const MAX_DEPTH: usize = 128;

enum Node {
    Map {
        map: serde_json::Map<String, Value>,
        key: Option<String>,
        anchor: usize,
        /// Values inside, for the alias bound.
        size: usize,
    },
    Seq {
        items: Vec<Value>,
        anchor: usize,
        size: usize,
    },
}

impl Collector {
    /// A complete value of `size` values (scalar, alias, or a closed mapping or sequence): into
    /// its parent.
    fn put(&mut self, value: Value, size: usize, anchor: usize, line: usize) {
        self.size = self.size.saturating_add(size);
        if self.size > MAX_VALUES {
            self.fail(
                line,
                format!("more than {MAX_VALUES} values (aliases included)"),
            );
            return;
        }
        if anchor != 0 {
            self.anchors.insert(anchor, (value.clone(), size));
        }
        match self.nodes.last_mut() {
            None => self.done = Some(value),
            Some(Node::Seq { items, size: s, .. }) => {
                *s += size;
                items.push(value);
            }
            Some(Node::Map {
                map, key, size: s, ..
            }) => match key.take() {
                // A mapping key: scalars become their text; other keys are not config.
                None => *key = Some(key_text(&value)),
                Some(k) => {
                    *s += size;
                    if map.insert(k.clone(), value).is_some() {
                        self.fail(line, format!("duplicate key {k:?}"));
                    }
                }
            },
        }
    }

    /// Records the first problem; building stops.
    fn fail(&mut self, line: usize, message: String) {
        if self.problem.is_none() {
            self.problem = Some((line, message));
        }
    }
}

fn key_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A scalar's value: plain scalars by the YAML 1.2 core schema, the rest as strings (a
/// `!!str`, `!!int`, ... tag decides first).
fn scalar(text: String, style: TScalarStyle, tag: Option<&Tag>) -> Value {
    let core = match tag {
        Some(t) if t.handle == "!!" => t.suffix.as_str(),
        _ if style != TScalarStyle::Plain => "str",
        _ => "",
    };
    if core == "str" {
        return Value::String(text);
    }
    match text.as_str() {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    let t = text.as_str();
    let digits = |s: &str, radix| !s.is_empty() && s.chars().all(|c| c.is_digit(radix));
    let unsigned = t.strip_prefix(['+', '-']).unwrap_or(t);
    if digits(unsigned, 10) {
        if let Ok(n) = t.parse::<i64>() {
            return Value::from(n);
        }
        if let Ok(n) = t.trim_start_matches('+').parse::<u64>() {
            return Value::from(n);
        }
    }
    for (prefix, radix) in [("0x", 16), ("0o", 8)] {
        if let Some(h) = t.strip_prefix(prefix)
            && digits(h, radix)
            && let Ok(n) = u64::from_str_radix(h, radix)
        {
            return Value::from(n);
        }
    }
    let float_chars = unsigned
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'));
    if float_chars
        && unsigned.starts_with(|c: char| c.is_ascii_digit() || c == '.')
        && unsigned.contains(|c: char| c.is_ascii_digit())
        && let Ok(f) = t.parse::<f64>()
        && let Some(n) = serde_json::Number::from_f64(f)
    {
        return Value::Number(n);
    }
    Value::String(text)
}

impl Collector {
    /// The path of the value that starts now, recording where it starts.
    fn value_path(&mut self, line: usize) -> Option<String> {
        let path = match self.stack.last_mut()? {
            Frame::Map { path, key } => {
                let key = key.take()?;
                if path.is_empty() {
                    key
                } else {
                    format!("{path}.{key}")
                }
            }
            Frame::Seq { path, next } => {
                *next += 1;
                format!("{path}[{}]", *next - 1)
            }
        };
        self.lines.entry(path.clone()).or_insert(line);
        Some(path)
    }
}

impl Collector {
    /// Reads the first document's events (a loop, not yaml-rust2's recursive loader, so depth
    /// costs no stack), until the document ends or a problem is found.
    fn read(&mut self, text: &str) -> Result<(), yaml_rust2::ScanError> {
        let mut parser = Parser::new_from_str(text);
        while self.done.is_none() && self.problem.is_none() {
            let (ev, mark) = parser.next_token()?;
            match ev {
                Event::StreamEnd | Event::DocumentEnd => break,
                ev => {
                    self.build(&ev, mark.line());
                    self.index(ev, mark);
                }
            }
        }
        Ok(())
    }

    /// Builds the value.
    fn build(&mut self, ev: &Event, line: usize) {
        match ev {
            Event::Scalar(text, style, anchor, tag) => {
                let v = scalar(text.clone(), *style, tag.as_ref());
                self.put(v, 1, *anchor, line);
            }
            Event::Alias(id) => {
                let (v, size) = match self.anchors.get(id) {
                    // Sized before it is cloned: the bound holds before the memory is spent.
                    Some((_, size)) if self.size.saturating_add(*size) > MAX_VALUES => {
                        (Value::Null, *size)
                    }
                    Some((v, size)) => (v.clone(), *size),
                    None => (Value::Null, 1),
                };
                self.put(v, size, 0, line);
            }
            Event::MappingStart(..) | Event::SequenceStart(..) if self.nodes.len() >= MAX_DEPTH => {
                self.fail(line, format!("nested deeper than {MAX_DEPTH} levels"));
            }
            Event::MappingStart(anchor, _) => self.nodes.push(Node::Map {
                map: serde_json::Map::new(),
                key: None,
                anchor: *anchor,
                size: 1,
            }),
            Event::SequenceStart(anchor, _) => self.nodes.push(Node::Seq {
                items: Vec::new(),
                anchor: *anchor,
                size: 1,
            }),
            Event::MappingEnd | Event::SequenceEnd => {
                let (v, size, anchor) = match self.nodes.pop() {
                    Some(Node::Map {
                        map, anchor, size, ..
                    }) => (Value::Object(map), size, anchor),
                    Some(Node::Seq {
                        items,
                        anchor,
                        size,
                    }) => (Value::Array(items), size, anchor),
                    None => return,
                };
                // Its values were counted as they were put in; only itself is new.
                self.size = self.size.saturating_sub(size - 1);
                self.put(v, size, anchor, line);
            }
            _ => {}
        }
    }

    /// Indexes lines by path.
    fn index(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(value, ..) => {
                if let Some(Frame::Map { key, .. }) = self.stack.last_mut()
                    && key.is_none()
                {
                    // A mapping key: the field's line is where its key stands.
                    let line = mark.line();
                    let Some(Frame::Map { path, key }) = self.stack.last_mut() else {
                        return;
                    };
                    let full = if path.is_empty() {
                        value.clone()
                    } else {
                        format!("{path}.{value}")
                    };
                    self.lines.entry(full).or_insert(line);
                    *key = Some(value);
                    return;
                }
                self.value_path(mark.line());
            }
            Event::MappingStart(..) => {
                let path = if self.stack.is_empty() {
                    String::new()
                } else {
                    self.value_path(mark.line()).unwrap_or_default()
                };
                self.stack.push(Frame::Map { path, key: None });
            }
            Event::SequenceStart(..) => {
                let path = self.value_path(mark.line()).unwrap_or_default();
                self.stack.push(Frame::Seq { path, next: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            Event::Alias(_) => {
                self.value_path(mark.line());
            }
            _ => {}
        }
    }
}

/// A YAML syntax error (or a duplicate key): its 1-based line, and what is wrong.
#[derive(Debug)]
pub(crate) struct SyntaxError {
    pub line: usize,
    pub message: String,
}

/// Parses YAML text (its first document) into a value and the line index, in one pass.
pub(crate) fn parse(text: &str) -> Result<(Value, LineIndex), SyntaxError> {
    let mut collector = Collector::default();
    collector.read(text).map_err(|e| SyntaxError {
        line: e.marker().line(),
        message: e.info().to_string(),
    })?;
    if let Some((line, message)) = collector.problem.take() {
        return Err(SyntaxError { line, message });
    }
    let index = LineIndex {
        lines: Arc::new(collector.lines),
    };
    Ok((collector.done.unwrap_or(Value::Null), index))
}

impl LineIndex {
    /// Indexes YAML text. Syntax errors leave the index partial.
    pub fn build(text: &str) -> LineIndex {
        let mut collector = Collector::default();
        let _ = collector.read(text);
        LineIndex {
            lines: Arc::new(collector.lines),
        }
    }

    /// The line of `path`, or of its nearest ancestor that is in the file (a missing field is
    /// reported on the line of the object that lacks it).
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(line) = self.lines.get(p) {
                return Some(*line);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

/// Renders a value as YAML (block style; strings that would read as another type are quoted).
pub fn to_yaml<T: serde::Serialize>(v: &T) -> Result<String, String> {
    use yaml_rust2::{Yaml, YamlEmitter};
    fn yaml(v: Value) -> Yaml {
        match v {
            Value::Null => Yaml::Null,
            Value::Bool(b) => Yaml::Boolean(b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => Yaml::Integer(i),
                None => Yaml::Real(n.to_string()),
            },
            Value::String(s) => Yaml::String(s),
            Value::Array(items) => Yaml::Array(items.into_iter().map(yaml).collect()),
            Value::Object(map) => Yaml::Hash(
                map.into_iter()
                    .map(|(k, v)| (Yaml::String(k), yaml(v)))
                    .collect(),
            ),
        }
    }
    let value = serde_json::to_value(v).map_err(|e| e.to_string())?;
    let mut out = String::new();
    YamlEmitter::new(&mut out)
        .dump(&yaml(value))
        .map_err(|e| e.to_string())?;
    out.push('\n');
    Ok(out)
}

/// Parses YAML text (its first document) as a JSON value, the way config files are read.
pub fn yaml_value(text: &str) -> Result<Value, String> {
    parse(text)
        .map(|(v, _)| v)
        .map_err(|e| format!("line {}: {}", e.line, e.message))
}
