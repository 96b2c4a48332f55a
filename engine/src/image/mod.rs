//! The image format: one file per kind of state, each with a header
//! (common magic, per-kind magic, version, payload length, CRC-32) and a
//! prost-encoded message; page data lives in a raw pages file whose data
//! starts at a page boundary so that restore can map it.
//!
//! docs/image-format.md describes the layout; `crust show` prints any image.

pub mod chain;
pub mod container;
pub mod identity;
pub mod messages;
pub mod show;

pub use container::{ImageDir, ImageError, Kind, PagesReader, PagesWriter, FORMAT_VERSION};
