//! Byte sizes on the command line: `4096`, `4K`/`4KiB`, `1M`/`1MiB`, `1G`/`1GiB` (binary).

use anyhow::{bail, Context};

/// Parses a size with an optional binary suffix.
pub fn parse_size(s: &str) -> anyhow::Result<u64> {
    let t = s.trim();
    let digits = t.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let suffix = &t[digits.len()..];
    let n: u64 = digits
        .parse()
        .with_context(|| format!("size {s:?}: expected a number with K/M/G suffix"))?;
    let mult: u64 = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => bail!("size {s:?}: unknown suffix {other:?}"),
    };
    n.checked_mul(mult)
        .with_context(|| format!("size {s:?} overflows"))
}

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
