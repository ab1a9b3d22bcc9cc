//! Maps a field path (`routes[2].match.host`) to the line it stands on, so errors found after
//! parsing (unknown cluster, bad certificate) still point into the file.

use std::collections::HashMap;
use std::sync::Arc;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Field path → 1-based line number.
#[derive(Debug, Clone, Default)]
pub struct LineIndex {
    lines: Arc<HashMap<String, usize>>,
    /// (line, column) where a scalar value starts → its path; serde_yaml reports errors there.
    pub(crate) values: Arc<HashMap<(usize, usize), String>>,
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, next: usize },
}

#[derive(Default)]
struct Collector {
    stack: Vec<Frame>,
    lines: HashMap<String, usize>,
    values: HashMap<(usize, usize), String>,
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

impl MarkedEventReceiver for Collector {
    fn on_event(&mut self, ev: Event, mark: Marker) {
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
                if let Some(path) = self.value_path(mark.line()) {
                    self.values.insert((mark.line(), mark.col()), path);
                }
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

impl LineIndex {
    /// Indexes YAML text. Syntax errors leave the index partial; serde reports those itself.
    pub fn build(text: &str) -> LineIndex {
        let mut collector = Collector::default();
        let mut parser = Parser::new_from_str(text);
        let _ = parser.load(&mut collector, false);
        LineIndex {
            lines: Arc::new(collector.lines),
            values: Arc::new(collector.values),
        }
    }

    /// The path of the scalar value that starts at this line and column (as serde_yaml reports
    /// them: 1-based line, 1-based column).
    pub fn value_at(&self, line: usize, column: usize) -> Option<&str> {
        self.values
            .get(&(line, column.saturating_sub(1)))
            .or_else(|| self.values.get(&(line, column)))
            .map(|s| s.as_str())
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
