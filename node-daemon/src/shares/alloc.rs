//! The allocation: PlanetLab's weighted shares with minimums and caps, work-conserving.
//!
//! Each active sliver first gets its minimum (never more than it can use); what remains of the
//! capacity is shared in proportion to the weights by water-filling: a sliver whose cap (or
//! demand) is below its proportional part keeps only that, and the rest goes to the others.
//! If the minimums alone exceed the capacity they are scaled down in proportion.
//! Rates are bit/s; `u64::MAX` means "no limit".

/// One sliver as the allocator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// `net_share`, at least 1.
    pub weight: u32,
    /// `net_min_rate`: guaranteed while it has traffic.
    pub min: u64,
    /// The cap: `net_max_rate` and the daily budget, whichever is lower (`u64::MAX`: none).
    pub cap: u64,
    /// What it can use now (`u64::MAX`: backlogged, it would use anything).
    pub demand: u64,
}

impl Claim {
    /// A backlogged sliver with weight `weight` and no minimum or cap.
    pub fn weighted(weight: u32) -> Self {
        Self {
            weight,
            min: 0,
            cap: u64::MAX,
            demand: u64::MAX,
        }
    }

    /// The most this sliver may get.
    fn ceiling(&self) -> u64 {
        self.cap.min(self.demand)
    }

    /// Its guaranteed part.
    fn floor(&self) -> u64 {
        self.min.min(self.ceiling())
    }
}

/// Share `capacity` bit/s among `claims`; returns one rate per claim, in order. With
/// `capacity == u64::MAX` (no node limit) each gets its cap.
pub fn allocate(capacity: u64, claims: &[Claim]) -> Vec<u64> {
    if capacity == u64::MAX {
        return claims.iter().map(|c| c.cap).collect();
    }
    let floors: Vec<u64> = claims.iter().map(Claim::floor).collect();
    let floor_sum: u128 = floors.iter().map(|&f| u128::from(f)).sum();
    if floor_sum >= u128::from(capacity) {
        // Oversubscribed minimums: scale them to the capacity.
        return floors
            .iter()
            .map(|&f| {
                u64::try_from(u128::from(f) * u128::from(capacity) / floor_sum.max(1))
                    .unwrap_or(u64::MAX)
            })
            .collect();
    }
    let mut rates = floors.clone();
    let mut left = (u128::from(capacity) - floor_sum) as f64;
    // Water-fill: visit slivers by how soon they reach their ceiling per unit of weight.
    let mut order: Vec<usize> = (0..claims.len()).collect();
    let headroom = |i: usize| claims[i].ceiling().saturating_sub(floors[i]) as f64;
    let weight = |i: usize| f64::from(claims[i].weight.max(1));
    order.sort_by(|&a, &b| (headroom(a) / weight(a)).total_cmp(&(headroom(b) / weight(b))));
    let mut weight_left: f64 = order.iter().map(|&i| weight(i)).sum();
    for &i in &order {
        if weight_left <= 0.0 || left <= 0.0 {
            break;
        }
        let part = left * weight(i) / weight_left;
        let give = part.min(headroom(i));
        rates[i] = floors[i].saturating_add(give as u64);
        left -= give;
        weight_left -= weight(i);
    }
    rates
}

/// Jain's fairness index of `achieved` against `ideal` (1.0 is perfect): computed on the
/// normalised rates x_i = achieved_i / ideal_i, which is the weighted form.
pub fn jain_index(achieved: &[f64], ideal: &[f64]) -> f64 {
    let x: Vec<f64> = achieved
        .iter()
        .zip(ideal)
        .filter(|(_, &i)| i > 0.0)
        .map(|(&a, &i)| a / i)
        .collect();
    let sum: f64 = x.iter().sum();
    let sq: f64 = x.iter().map(|v| v * v).sum();
    if sq == 0.0 {
        return 1.0;
    }
    sum * sum / (x.len() as f64 * sq)
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = 1_000_000;

    fn claim(weight: u32, min: u64, cap: u64) -> Claim {
        Claim {
            weight,
            min,
            cap,
            demand: u64::MAX,
        }
    }

    fn close(a: u64, b: u64) -> bool {
        a.abs_diff(b) <= 2
    }

    #[test]
    fn weights_split_the_capacity() {
        let r = allocate(100 * M, &[Claim::weighted(1), Claim::weighted(3)]);
        assert!(close(r[0], 25 * M) && close(r[1], 75 * M), "{r:?}");
    }

    #[test]
    fn minimum_first_then_weights() {
        // 10 guaranteed to the first, the remaining 90 split 1:2.
        let r = allocate(100 * M, &[claim(1, 10 * M, u64::MAX), Claim::weighted(2)]);
        assert!(close(r[0], 40 * M) && close(r[1], 60 * M), "{r:?}");
    }

    #[test]
    fn a_cap_gives_its_surplus_to_the_others() {
        let r = allocate(
            100 * M,
            &[claim(1, 0, 10 * M), Claim::weighted(1), Claim::weighted(2)],
        );
        assert!(close(r[0], 10 * M), "{r:?}");
        assert!(close(r[1], 30 * M) && close(r[2], 60 * M), "{r:?}");
        assert!(close(r.iter().sum(), 100 * M), "work-conserving");
    }

    #[test]
    fn an_idle_or_light_sliver_takes_only_its_demand() {
        let light = Claim {
            demand: 5 * M,
            ..Claim::weighted(4)
        };
        let r = allocate(100 * M, &[light, Claim::weighted(1)]);
        assert!(close(r[0], 5 * M) && close(r[1], 95 * M), "{r:?}");
    }

    #[test]
    fn oversubscribed_minimums_are_scaled() {
        let r = allocate(
            100 * M,
            &[claim(1, 80 * M, u64::MAX), claim(1, 120 * M, u64::MAX)],
        );
        assert!(close(r[0], 40 * M) && close(r[1], 60 * M), "{r:?}");
    }

    #[test]
    fn every_sliver_capped_leaves_capacity_unused() {
        let r = allocate(100 * M, &[claim(1, 0, 10 * M), claim(5, 0, 20 * M)]);
        assert_eq!(r, vec![10 * M, 20 * M]);
    }

    #[test]
    fn no_node_limit_means_each_gets_its_cap() {
        let r = allocate(u64::MAX, &[claim(1, 0, 7 * M), Claim::weighted(1)]);
        assert_eq!(r, vec![7 * M, u64::MAX]);
    }

    #[test]
    fn min_above_demand_is_not_reserved() {
        let quiet = Claim {
            demand: M,
            ..claim(1, 50 * M, u64::MAX)
        };
        let r = allocate(100 * M, &[quiet, Claim::weighted(1)]);
        assert!(close(r[0], M) && close(r[1], 99 * M), "{r:?}");
    }

    /// A small deterministic generator (no dependency for one test).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) % n
        }
    }

    #[test]
    fn property_invariants_hold_for_random_claims() {
        let mut rng = Lcg(7);
        for _ in 0..20_000 {
            let n = 1 + rng.next(32) as usize;
            let capacity = 1 + rng.next(10_000) * M;
            let claims: Vec<Claim> = (0..n)
                .map(|_| {
                    let cap = if rng.next(3) == 0 {
                        u64::MAX
                    } else {
                        1 + rng.next(2_000) * M
                    };
                    let min = if rng.next(2) == 0 {
                        0
                    } else {
                        rng.next(cap.min(500 * M))
                    };
                    let demand = if rng.next(4) == 0 {
                        rng.next(1_000) * M
                    } else {
                        u64::MAX
                    };
                    Claim {
                        weight: 1 + rng.next(8) as u32,
                        min,
                        cap,
                        demand,
                    }
                })
                .collect();
            let r = allocate(capacity, &claims);
            let total: u128 = r.iter().map(|&x| u128::from(x)).sum();
            let slack = n as u128 + 1;
            // Never more than the capacity, never above a cap or the demand.
            assert!(total <= u128::from(capacity) + slack, "{claims:?} {r:?}");
            for (c, &x) in claims.iter().zip(&r) {
                assert!(x <= c.ceiling(), "{c:?} got {x}");
            }
            let floors: u128 = claims.iter().map(|c| u128::from(c.floor())).sum();
            if floors <= u128::from(capacity) {
                // Minimums are honoured.
                for (c, &x) in claims.iter().zip(&r) {
                    assert!(x + 1 >= c.floor(), "{c:?} got {x}");
                }
                // Work-conserving: capacity is left over only if everyone is at a ceiling.
                let unsaturated = claims
                    .iter()
                    .zip(&r)
                    .any(|(c, &x)| x + (n as u64) < c.ceiling());
                if unsaturated {
                    assert!(total + slack >= u128::from(capacity), "{claims:?} {r:?}");
                }
                // Weighted fairness: among unsaturated slivers, the part above the minimum
                // is proportional to the weight.
                let parts: Vec<f64> = claims
                    .iter()
                    .zip(&r)
                    .filter(|(c, &x)| x + (n as u64) < c.ceiling())
                    .map(|(c, &x)| (x - c.floor()) as f64 / f64::from(c.weight))
                    .collect();
                if let (Some(lo), Some(hi)) = (
                    parts.iter().copied().reduce(f64::min),
                    parts.iter().copied().reduce(f64::max),
                ) {
                    assert!(hi - lo <= 2.0 + hi * 1e-9, "{claims:?} {r:?}");
                }
            }
        }
    }

    #[test]
    fn jain_is_one_for_exact_and_lower_for_skew() {
        assert!((jain_index(&[1.0, 3.0], &[1.0, 3.0]) - 1.0).abs() < 1e-12);
        assert!(jain_index(&[2.0, 2.0], &[1.0, 3.0]) < 0.9);
    }
}
