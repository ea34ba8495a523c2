//! Which seeds a campaign runs: a range `A..B` (B excluded) or `A..=B`, a list `1,5,9`, or `N`
//! seeds drawn from one master seed (printed, so the same campaign can be run again).

use rand::rngs::Xoshiro256PlusPlus;
use rand::{Rng, SeedableRng};

/// Most seeds one campaign runs: every seed leaves a run directory behind.
pub const MAX_SEEDS: usize = 100_000;

/// The seeds of a campaign, as the user gave them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeedSet {
    /// Every seed from `start` to `end`, `end` included.
    Range {
        /// First seed.
        start: u64,
        /// Last seed (included).
        end: u64,
    },
    /// These seeds, in this order.
    List(Vec<u64>),
    /// `count` seeds drawn from `master` (Xoshiro256PlusPlus, portable: the same master gives
    /// the same seeds on every machine).
    Drawn {
        /// The master seed.
        master: u64,
        /// How many seeds.
        count: usize,
    },
}

/// A seed set that cannot be used; the message names the text and what to write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SeedSetError(pub String);

impl SeedSet {
    /// Parses `A..B` (B excluded), `A..=B` or `S1,S2,…`.
    pub fn parse(text: &str) -> Result<SeedSet, SeedSetError> {
        let text = text.trim();
        let number = |s: &str| {
            s.trim().parse::<u64>().map_err(|_| {
                SeedSetError(format!(
                    "seeds `{text}`: `{}` is not a seed (a whole number from 0 to {}); write A..B, A..=B or 1,5,9",
                    s.trim(),
                    u64::MAX
                ))
            })
        };
        let set = if let Some((a, b)) = text.split_once("..=") {
            SeedSet::Range {
                start: number(a)?,
                end: number(b)?,
            }
        } else if let Some((a, b)) = text.split_once("..") {
            let (start, end) = (number(a)?, number(b)?);
            if end <= start {
                return Err(SeedSetError(format!(
                    "seeds `{text}`: the range is empty (B is excluded in A..B; write A..=B to include it)"
                )));
            }
            SeedSet::Range { start, end: end - 1 }
        } else {
            SeedSet::List(text.split(',').map(number).collect::<Result<_, _>>()?)
        };
        set.check()?;
        Ok(set)
    }

    /// `count` seeds drawn from `master`.
    pub fn drawn(master: u64, count: usize) -> Result<SeedSet, SeedSetError> {
        let set = SeedSet::Drawn { master, count };
        set.check()?;
        Ok(set)
    }

    fn check(&self) -> Result<(), SeedSetError> {
        match self {
            SeedSet::Range { start, end } if end < start => {
                return Err(SeedSetError(format!("seeds {start}..={end}: the range is empty")));
            }
            SeedSet::List(seeds) => {
                let mut seen = std::collections::HashSet::new();
                if let Some(dup) = seeds.iter().find(|s| !seen.insert(**s)) {
                    return Err(SeedSetError(format!("seeds: seed {dup} is listed twice")));
                }
            }
            SeedSet::Drawn { count: 0, .. } => {
                return Err(SeedSetError("--count must be at least 1".into()));
            }
            _ => {}
        }
        if self.len() > MAX_SEEDS {
            return Err(SeedSetError(format!(
                "{} seeds is more than one campaign runs (at most {MAX_SEEDS}); split it",
                self.len()
            )));
        }
        Ok(())
    }

    /// How many seeds.
    pub fn len(&self) -> usize {
        match self {
            SeedSet::Range { start, end } => (end.saturating_sub(*start))
                .saturating_add(1)
                .min(usize::MAX as u64) as usize,
            SeedSet::List(seeds) => seeds.len(),
            SeedSet::Drawn { count, .. } => *count,
        }
    }

    /// Whether there are no seeds (never, once parsed).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The seeds in the order they run. Drawn seeds are distinct.
    pub fn seeds(&self) -> Vec<u64> {
        match self {
            SeedSet::Range { start, end } => (*start..=*end).collect(),
            SeedSet::List(seeds) => seeds.clone(),
            SeedSet::Drawn { master, count } => {
                let mut rng = Xoshiro256PlusPlus::seed_from_u64(*master);
                let mut seen = std::collections::HashSet::new();
                let mut seeds = Vec::with_capacity(*count);
                while seeds.len() < *count {
                    let seed = rng.next_u64();
                    if seen.insert(seed) {
                        seeds.push(seed);
                    }
                }
                seeds
            }
        }
    }

    /// The master seed, for drawn sets.
    pub fn master(&self) -> Option<u64> {
        match self {
            SeedSet::Drawn { master, .. } => Some(*master),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_lists_and_draws() {
        assert_eq!(SeedSet::parse("3..6").unwrap().seeds(), vec![3, 4, 5]);
        assert_eq!(SeedSet::parse("3..=6").unwrap().seeds(), vec![3, 4, 5, 6]);
        assert_eq!(SeedSet::parse("1,5, 9").unwrap().seeds(), vec![1, 5, 9]);
        assert_eq!(SeedSet::parse("7").unwrap().seeds(), vec![7]);
        let drawn = SeedSet::drawn(42, 5).unwrap();
        assert_eq!(drawn.seeds(), drawn.seeds(), "a master seed gives the same seeds");
        assert_eq!(drawn.seeds().len(), 5);
        assert_ne!(drawn.seeds(), SeedSet::drawn(43, 5).unwrap().seeds());
        assert_eq!(drawn.master(), Some(42));
    }

    #[test]
    fn bad_sets_say_what_to_write() {
        let e = SeedSet::parse("5..5").unwrap_err().0;
        assert!(e.contains("the range is empty"), "{e}");
        let e = SeedSet::parse("1,x").unwrap_err().0;
        assert!(e.contains("`x` is not a seed") && e.contains("A..B"), "{e}");
        let e = SeedSet::parse("1,2,1").unwrap_err().0;
        assert!(e.contains("seed 1 is listed twice"), "{e}");
        let e = SeedSet::parse("0..1000000").unwrap_err().0;
        assert!(e.contains("at most 100000"), "{e}");
        assert!(SeedSet::drawn(1, 0).is_err());
    }
}
