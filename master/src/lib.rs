//! Metadata master (being written).
