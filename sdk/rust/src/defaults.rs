//! Defaults first-party filters share, for `#[serde(default = "...")]` in config structs.
//!
//! ```
//! #[derive(serde::Deserialize)]
//! struct Config {
//!     #[serde(default = "weir_filter::defaults::realm")]
//!     realm: String,
//!     #[serde(default = "weir_filter::defaults::yes")]
//!     strip_credentials: bool,
//! }
//! let c: Config = serde_json::from_str("{}").unwrap();
//! assert_eq!((c.realm.as_str(), c.strip_credentials), ("weir", true));
//! ```

/// `true`, for options that are on unless turned off.
pub fn yes() -> bool {
    true
}

/// The realm auth filters announce in `WWW-Authenticate` unless configured: `weir`.
pub fn realm() -> String {
    "weir".to_owned()
}
