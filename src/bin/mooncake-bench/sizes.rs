//! Byte sizes on the command line: `4096`, `4K`, `64KiB`, `1M`, `16MB`, `1G` (binary units).

use anyhow::{bail, Context};

/// Parses a size.
pub fn parse(s: &str) -> anyhow::Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().with_context(|| format!("size {s:?}"))?;
    let mult = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        _ => bail!("size {s:?}: unknown unit {unit:?}"),
    };
    n.checked_mul(mult)
        .with_context(|| format!("size {s:?} overflows"))
}

/// Shows a size with the largest exact binary unit.
pub fn show(n: u64) -> String {
    for (unit, m) in [("G", 1u64 << 30), ("M", 1 << 20), ("K", 1 << 10)] {
        if n >= m && n / m * m == n {
            return format!("{}{unit}", n / m);
        }
    }
    n.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_shows() {
        assert_eq!(parse("4096").unwrap(), 4096);
        assert_eq!(parse("4K").unwrap(), 4096);
        assert_eq!(parse("64KiB").unwrap(), 65536);
        assert_eq!(parse("16m").unwrap(), 16 << 20);
        assert_eq!(parse("1G").unwrap(), 1 << 30);
        assert!(parse("1X").is_err());
        assert!(parse("").is_err());
        assert!(parse("99999999999G").is_err());
        assert_eq!(show(16 << 20), "16M");
        assert_eq!(show(4096), "4K");
        assert_eq!(show(1000), "1000");
    }
}
