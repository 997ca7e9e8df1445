//! Store client (being written).
