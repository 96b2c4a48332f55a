//! Parsers for the /proc files the engine reads.
