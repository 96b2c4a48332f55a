//! zdtm test protocol library.
