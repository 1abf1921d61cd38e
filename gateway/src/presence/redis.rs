//! Redis implementation of presence (in progress).
