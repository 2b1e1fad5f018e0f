//! The `cpu_pct` guarantee (PlanetLab's): a sliver gets at least this percent of one CPU
//! when it wants it, made of CFS weights alone. Sibling cgroups that are all busy share the
//! node's `N` CPUs in proportion to their weights, so sliver `i` gets at least
//! `N × w_i / Σw` CPUs (as much as its threads can use); its guarantee holds when
//! `w_i / Σw ≥ pct_i / (100 N)`. [`weights`] finds the smallest such weights that keep
//! every sliver at its share's weight or above, [`admit`] keeps the guarantees within
//! [`capacity_pct`] (90 % of the node's CPUs: the rest is the node's own), and [`node_cpus`]
//! is `N`. `docs/sliver-resources.md` tells what this does not guarantee.

use crate::error::SliverError;
use crate::sliver_cgroups::WeightUnit;

/// Share of the node's CPUs the guarantees may take together, as a fraction: 9/10.
const CAPACITY: (u64, u64) = (9, 10);

/// Most passes of the rounding fix-up in [`weights`] (each raises a weight or ends it).
const FIX_UP_PASSES: usize = 64;

/// Most times [`weights`] scales every weight down by half to make room for a guarantee
/// the kernel's largest weight cannot meet beside the others.
const RESCALES: usize = 12;

/// The CPUs the daemon (and so every sliver beneath its cgroup) may run on: its affinity,
/// which its cpuset bounds; at least 1.
pub fn node_cpus() -> u32 {
    // SAFETY: an all-zero cpu_set_t is a valid empty set; sched_getaffinity writes at most
    // the size it is given into the set, which outlives the call.
    let counted = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            libc::CPU_COUNT(&set)
        } else {
            0
        }
    };
    u32::try_from(counted).ok().filter(|&n| n > 0).unwrap_or(1)
}

/// What the guarantees of a node of `cpus` CPUs may add up to, percent of one CPU: 90 %
/// of `100 × cpus`, rounded down.
pub fn capacity_pct(cpus: u32) -> u64 {
    100 * u64::from(cpus.max(1)) * CAPACITY.0 / CAPACITY.1
}

/// Whether a guarantee of `pct` percent of one CPU fits beside the `others` (percent of one
/// CPU, summed over the node's other slivers) on a node of `cpus` CPUs.
///
/// # Errors
/// [`SliverError::Conflict`] naming `cpu_pct`, saying how much is left, when the sum would
/// exceed [`capacity_pct`].
pub fn admit(others: u64, pct: u32, cpus: u32) -> Result<(), SliverError> {
    let capacity = capacity_pct(cpus);
    if others + u64::from(pct) <= capacity {
        return Ok(());
    }
    Err(SliverError::conflict(
        Some("cpu_pct"),
        format!(
            "{pct} % of one CPU does not fit: {} % is left of the {capacity} % the node's \
             slivers may be guaranteed together (90 % of its {} CPUs; the others hold {others} %)",
            capacity.saturating_sub(others),
            cpus.max(1)
        ),
    ))
}

/// A sliver's CPU fields, as [`weights`] takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Demand {
    /// `cpu_share`: its weight is `unit.of_share(share)` at least.
    pub share: u32,
    /// `cpu_pct`: the guarantee, percent of one CPU.
    pub pct: Option<u32>,
}

/// Each sliver's CPU weight, in `unit` (the kernel's unit and bounds), on a node of `cpus`
/// CPUs, in the order of `slivers`.
///
/// With every sliver busy, each one with a `pct` gets `w_i / Σw ≥ pct_i / (100 × cpus)`,
/// and every weight is at least its share's (`unit.of_share`), so slivers without a
/// guarantee keep exactly today's weights. Solved exactly: with `f_i = pct_i / (100 ×
/// cpus)`, the guarantees that their share's weight does not already meet take `f_i × W`
/// of a total `W = P / (1 − F)`, where `P` sums the other slivers' weights and `F` those
/// guarantees' fractions; that set only grows, so a few passes find it. Then whole numbers:
/// guaranteed weights rounded up and raised until each inequality holds exactly.
///
/// Two cases bend it. Guarantees above [`capacity_pct`] (a node that lost CPUs since they
/// were admitted) are scaled down together to fit it. A guaranteed weight above the kernel's
/// largest scales every weight down by one factor (15/16 of the largest then being the
/// highest; halved again while rounding leaves a guarantee short), so slivers without a
/// guarantee stay in proportion to within rounding but fall below their share's weight; a
/// guarantee the kernel's bounds cannot meet at all (hundreds of slivers at the least
/// weight) is met as nearly as they allow.
pub fn weights(slivers: &[Demand], cpus: u32, unit: WeightUnit) -> Vec<u64> {
    let base: Vec<u64> = slivers.iter().map(|d| unit.of_share(d.share)).collect();
    let pct: Vec<u64> = slivers
        .iter()
        .map(|d| u64::from(d.pct.unwrap_or(0)))
        .collect();
    let cpus = u64::from(cpus.max(1));
    // Sliver i's target fraction of Σw is pct_i × num / den.
    let total_pct: u64 = pct.iter().sum();
    let capacity = capacity_pct(u32::try_from(cpus).unwrap_or(u32::MAX));
    let (num, den) = if total_pct > capacity {
        (capacity, total_pct * 100 * cpus)
    } else {
        (1, 100 * cpus)
    };
    if total_pct == 0 {
        return base;
    }
    let fraction: Vec<f64> = pct.iter().map(|&p| (p * num) as f64 / den as f64).collect();

    // The guarantees their share's weight does not meet, and the total they make.
    let mut bound = vec![false; slivers.len()];
    let total = loop {
        let plain: f64 = (0..slivers.len())
            .filter(|&i| !bound[i])
            .map(|i| base[i] as f64)
            .sum();
        let taken: f64 = (0..slivers.len())
            .filter(|&i| bound[i])
            .map(|i| fraction[i])
            .sum();
        // taken ≤ 9/10 (the fractions sum to at most that), and `plain` keeps at least one
        // sliver: binding them all would need fractions summing above 1.
        let total = plain / (1.0 - taken);
        let mut grew = false;
        for i in 0..slivers.len() {
            if !bound[i] && (base[i] as f64) < fraction[i] * total {
                bound[i] = true;
                grew = true;
            }
        }
        if !grew {
            break total;
        }
    };
    let real: Vec<f64> = (0..slivers.len())
        .map(|i| {
            if bound[i] {
                fraction[i] * total
            } else {
                base[i] as f64
            }
        })
        .collect();
    let mut ceiling = unit.max as f64 * 15.0 / 16.0;
    let mut w = Vec::new();
    for _ in 0..RESCALES {
        w = whole_weights(&real, &bound, &base, ceiling, unit);
        if fix_up(&mut w, &pct, (num, den), unit) {
            break;
        }
        // The kernel's largest weight cannot meet a guarantee beside the others: make room
        // by scaling them all further down.
        ceiling /= 2.0;
    }
    w
}

/// The weights `real` as whole numbers within `unit`'s bounds: the guaranteed (`bound`)
/// rounded up, the others their `base`, while no guaranteed one is above `ceiling`; else
/// every weight scaled down by the one factor that puts the highest guaranteed one there
/// (the others rounded to the nearest).
fn whole_weights(
    real: &[f64],
    bound: &[bool],
    base: &[u64],
    ceiling: f64,
    unit: WeightUnit,
) -> Vec<u64> {
    let highest = (0..real.len())
        .filter(|&i| bound[i])
        .map(|i| real[i])
        .fold(0.0, f64::max);
    let k = if highest > ceiling {
        ceiling / highest
    } else {
        1.0
    };
    (0..real.len())
        .map(|i| {
            let whole = match (bound[i], k < 1.0) {
                (true, _) => (real[i] * k).ceil() as u64,
                (false, true) => (real[i] * k).round() as u64,
                (false, false) => base[i],
            };
            whole.clamp(unit.min, unit.max)
        })
        .collect()
}

/// Raise each guaranteed weight (`pct[i] > 0`) until `w_i × den ≥ pct_i × num × Σw` holds
/// exactly, as far as `unit.max` allows; whether they all hold then.
fn fix_up(w: &mut [u64], pct: &[u64], (num, den): (u64, u64), unit: WeightUnit) -> bool {
    let den = u128::from(den);
    let mut sum: u128 = w.iter().map(|&x| u128::from(x)).sum();
    let short = |w: u64, i: usize, sum: u128| u128::from(w) * den < u128::from(pct[i] * num) * sum;
    for _ in 0..FIX_UP_PASSES {
        let mut raised = false;
        for i in (0..w.len()).filter(|&i| pct[i] > 0) {
            if !short(w[i], i, sum) {
                continue;
            }
            // The least w_i with w_i × den ≥ want × (others + w_i).
            let want = u128::from(pct[i] * num);
            let others = sum - u128::from(w[i]);
            let needed = (want * others).div_ceil(den - want);
            let needed = u64::try_from(needed).unwrap_or(u64::MAX).min(unit.max);
            if needed > w[i] {
                sum += u128::from(needed - w[i]);
                w[i] = needed;
                raised = true;
            }
        }
        if !raised {
            break;
        }
    }
    (0..w.len()).all(|i| pct[i] == 0 || !short(w[i], i, sum))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sliver_cgroups::{V1_SHARES, V2_WEIGHT};

    /// Whether every guarantee holds exactly: w_i × 100 × cpus ≥ pct_i × Σw.
    fn guaranteed(slivers: &[Demand], w: &[u64], cpus: u32) -> Result<(), String> {
        let sum: u128 = w.iter().map(|&x| u128::from(x)).sum();
        for (i, d) in slivers.iter().enumerate() {
            let Some(pct) = d.pct else { continue };
            if u128::from(w[i]) * 100 * u128::from(cpus) < u128::from(pct) * sum {
                return Err(format!(
                    "sliver {i} ({d:?}) gets {w:?}[{i}] of {sum}: below {pct} % of one of {cpus} CPUs"
                ));
            }
        }
        Ok(())
    }

    /// A small deterministic generator (64-bit LCG), so that failures repeat.
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) % n
        }
    }

    /// A mix of 1..=16 slivers with shares 1..=10, some with guarantees of at most 100 each
    /// (one vCPU) that sum to at most `budget`.
    fn mix(rng: &mut Lcg, budget: u64) -> Vec<Demand> {
        let n = 1 + rng.below(16) as usize;
        let mut left = budget;
        (0..n)
            .map(|_| {
                let share = 1 + rng.below(10) as u32;
                let most = left.min(100);
                let pct = (most > 0 && rng.below(2) == 0).then(|| 1 + rng.below(most) as u32);
                left -= u64::from(pct.unwrap_or(0));
                Demand { share, pct }
            })
            .collect()
    }

    #[test]
    fn guarantees_hold_for_random_mixes_in_both_units() {
        let mut rng = Lcg(7);
        for case in 0..4000 {
            let cpus = 1 + rng.below(8) as u32;
            let slivers = mix(&mut rng, capacity_pct(cpus));
            for unit in [V1_SHARES, V2_WEIGHT] {
                let w = weights(&slivers, cpus, unit);
                assert_eq!(w.len(), slivers.len());
                assert!(
                    w.iter().all(|&x| (unit.min..=unit.max).contains(&x)),
                    "case {case}: {w:?} out of {unit:?}"
                );
                if let Err(e) = guaranteed(&slivers, &w, cpus) {
                    panic!("case {case} ({unit:?}): {e}");
                }
                // Slivers without a guarantee stay in proportion, to within rounding.
                let plain: Vec<(u64, u64)> = (0..slivers.len())
                    .filter(|&i| slivers[i].pct.is_none())
                    .map(|i| (w[i], unit.of_share(slivers[i].share)))
                    .collect();
                for &(wi, bi) in &plain {
                    for &(wj, bj) in &plain {
                        let skew = (wi * bj).abs_diff(wj * bi);
                        assert!(skew * 2 <= bi + bj, "case {case}: {slivers:?} -> {w:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn weights_stay_at_least_the_shares_when_the_kernel_allows() {
        let mut rng = Lcg(11);
        for case in 0..2000 {
            let cpus = 1 + rng.below(8) as u32;
            // Guarantees of at most 45 % of the node: the total is below 1.82 times the
            // shares' weights, which v1's bounds hold for every such mix.
            let slivers = mix(&mut rng, capacity_pct(cpus) / 2);
            let w = weights(&slivers, cpus, V1_SHARES);
            for (i, d) in slivers.iter().enumerate() {
                let base = V1_SHARES.of_share(d.share);
                assert!(w[i] >= base, "case {case}: {slivers:?} -> {w:?}");
                if d.pct.is_none() {
                    assert_eq!(w[i], base, "case {case}: {slivers:?} -> {w:?}");
                }
            }
        }
    }

    #[test]
    fn shares_alone_give_exactly_the_share_weights() {
        for unit in [V1_SHARES, V2_WEIGHT] {
            let shares = [1, 3, 1000, 7, 100];
            let slivers: Vec<Demand> = shares
                .iter()
                .map(|&share| Demand { share, pct: None })
                .collect();
            let want: Vec<u64> = shares.iter().map(|&s| unit.of_share(s)).collect();
            assert_eq!(weights(&slivers, 4, unit), want);
        }
        assert_eq!(weights(&[], 2, V2_WEIGHT), Vec::<u64>::new());
    }

    #[test]
    fn a_guarantee_the_share_meets_changes_nothing() {
        // Share 3 of 4 on 2 CPUs is 150 % of one CPU: a guarantee of 100 is met already.
        let slivers = [
            Demand {
                share: 3,
                pct: Some(100),
            },
            Demand {
                share: 1,
                pct: None,
            },
        ];
        assert_eq!(weights(&slivers, 2, V2_WEIGHT), vec![300, 100]);
    }

    #[test]
    fn the_sum_at_capacity_holds_and_one_guarantee_is_solved_exactly() {
        // 2 CPUs, capacity 180: 90 + 90 among ten share-1 slivers.
        let mut slivers = vec![
            Demand {
                share: 1,
                pct: None
            };
            10
        ];
        slivers[0].pct = Some(90);
        slivers[1].pct = Some(90);
        for unit in [V1_SHARES, V2_WEIGHT] {
            let w = weights(&slivers, 2, unit);
            guaranteed(&slivers, &w, 2).expect("at capacity");
            assert!(w[2..].iter().all(|&x| x == w[2]), "{w:?}");
        }
        // One CPU, one sliver of 50 % beside three of share 1 (v2: 300): W = 300 / 0.5, so
        // it gets 300, exactly half.
        let mut slivers = vec![
            Demand {
                share: 1,
                pct: None
            };
            4
        ];
        slivers[0].pct = Some(50);
        assert_eq!(weights(&slivers, 1, V2_WEIGHT), vec![300, 100, 100, 100]);
    }

    #[test]
    fn guarantees_beyond_capacity_are_scaled_to_it() {
        // One CPU (capacity 90) holding 100 + 100 after losing CPUs: each gets 45 %.
        let slivers = [
            Demand {
                share: 1,
                pct: Some(100),
            },
            Demand {
                share: 1,
                pct: Some(100),
            },
            Demand {
                share: 1,
                pct: None,
            },
        ];
        let w = weights(&slivers, 1, V2_WEIGHT);
        let sum: u64 = w.iter().sum();
        assert!(w[0] * 100 >= 45 * sum && w[1] * 100 >= 45 * sum, "{w:?}");
        assert!(w[2] >= 1, "{w:?}");
    }

    #[test]
    fn admission_keeps_a_tenth_for_the_node() {
        assert_eq!(capacity_pct(1), 90);
        assert_eq!(capacity_pct(2), 180);
        assert_eq!(capacity_pct(0), 90);
        admit(80, 100, 2).expect("180 fits");
        let e = admit(81, 100, 2).expect_err("181 does not");
        assert_eq!(e.field(), Some("cpu_pct"));
        assert!(matches!(e, SliverError::Conflict { .. }), "{e:?}");
        assert!(e.to_string().contains("99 % is left"), "{e}");
        assert!(node_cpus() >= 1);
    }
}
