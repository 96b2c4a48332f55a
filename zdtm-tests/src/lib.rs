//! Shared helpers for the zdtm test programs.
