//! Values fault fields are written in: human durations, tc-style rates and sizes, percentages.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A duration written as a human string: `"500ms"`, `"5s"`, `"2m"`, `"1m 30s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Dur(pub Duration);

impl Dur {
    /// `n` seconds.
    pub const fn secs(n: u64) -> Dur {
        Dur(Duration::from_secs(n))
    }

    /// `n` milliseconds.
    pub const fn millis(n: u64) -> Dur {
        Dur(Duration::from_millis(n))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s.trim())
            .map(Dur)
            .map_err(|e| format!("{s:?} is not a duration ({e}); write e.g. \"500ms\", \"5s\" or \"2m\""))
    }
}

impl From<Duration> for Dur {
    fn from(d: Duration) -> Dur {
        Dur(d)
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration string such as \"500ms\", \"5s\" or \"2m\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// A percentage 0..=100, optionally written with a trailing `%` on the command line.
pub fn parse_percent(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("{s:?} is not a percentage"))?;
    if (0.0..=100.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{s:?} is not between 0 and 100"))
    }
}

/// Splits `8mbit` into (8.0, "mbit").
fn number_and_unit(s: &str) -> Option<(f64, String)> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number: f64 = number.parse().ok()?;
    (number.is_finite() && number >= 0.0).then(|| (number, unit.trim().to_ascii_lowercase()))
}

/// A rate in bits per second, with tc's units: `bit`, `kbit`, `mbit`, `gbit`, `tbit` (powers of
/// 1000), `kibit`… (powers of 1024), and `bps`, `kbps`, `mbps`, `gbps` for bytes per second.
/// A bare number is bits per second.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a rate like 8mbit, 500kbit or 1gbit");
    let (n, unit) = number_and_unit(s).ok_or_else(bad)?;
    let factor: f64 = match unit.as_str() {
        "" | "bit" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        "tbit" => 1e12,
        "kibit" => 1024.0,
        "mibit" => 1024.0 * 1024.0,
        "gibit" => 1024.0 * 1024.0 * 1024.0,
        "bps" => 8.0,
        "kbps" => 8e3,
        "mbps" => 8e6,
        "gbps" => 8e9,
        _ => return Err(bad()),
    };
    let bps = (n * factor).round();
    if bps < 1.0 || bps > u64::MAX as f64 {
        return Err(format!("{s:?}: the rate must be at least 1 bit/s"));
    }
    Ok(bps as u64)
}

/// A size in bytes, with tc's units: `b`, `k`/`kb`, `m`/`mb`, `g`/`gb` (powers of 1024), and
/// `kbit`, `mbit` for sizes given in bits. A bare number is bytes. At most 4 GiB.
pub fn parse_size(s: &str) -> Result<u32, String> {
    let bad = || format!("{s:?} is not a size like 32kb, 1mb or 1500");
    let (n, unit) = number_and_unit(s).ok_or_else(bad)?;
    let factor: f64 = match unit.as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "kbit" => 1024.0 / 8.0,
        "mbit" => 1024.0 * 1024.0 / 8.0,
        _ => return Err(bad()),
    };
    let bytes = (n * factor).round();
    if bytes > u32::MAX as f64 {
        return Err(format!("{s:?}: at most 4 GiB"));
    }
    Ok(bytes as u32)
}
