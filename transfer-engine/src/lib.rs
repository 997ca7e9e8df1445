//! Transfer engine (being written).
