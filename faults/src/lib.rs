//! Linux fault primitives.
