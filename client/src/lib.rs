//! Typed gateway client (filled in below).
