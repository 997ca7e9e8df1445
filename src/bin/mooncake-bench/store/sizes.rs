//! Workload cells on the command line: `SIZE:BATCH`, e.g. `4K:1024`.

use anyhow::{bail, Context};

pub use crate::sizes::parse as parse_size;

/// A measured cell: objects of `value_size` bytes moved `batch` keys per call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cell {
    /// Object size.
    pub value_size: u64,
    /// Keys per call (1 = the single-key calls).
    pub batch: usize,
}

/// Parses `SIZE:BATCH`, e.g. `4K:1024`.
pub fn parse_cell(s: &str) -> anyhow::Result<Cell> {
    let (size, batch) = s
        .split_once(':')
        .with_context(|| format!("cell {s:?}: expected SIZE:BATCH"))?;
    let cell = Cell {
        value_size: parse_size(size)?,
        batch: batch
            .trim()
            .parse()
            .with_context(|| format!("cell {s:?}: batch"))?,
    };
    if cell.value_size == 0 || cell.batch == 0 {
        bail!("cell {s:?}: size and batch must be > 0");
    }
    Ok(cell)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_cells_parse() {
        assert_eq!(parse_size("4KiB").unwrap(), 4096);
        assert_eq!(parse_size("1M").unwrap(), 1 << 20);
        assert_eq!(parse_size("123").unwrap(), 123);
        assert!(parse_size("1X").is_err());
        assert_eq!(
            parse_cell("4K:64").unwrap(),
            Cell {
                value_size: 4096,
                batch: 64
            }
        );
        assert!(parse_cell("4K").is_err());
        assert!(parse_cell("4K:0").is_err());
    }
}
