//! Exact integer noise for differential privacy: the discrete Laplace distribution,
//! sampled with only integer arithmetic (Canonne, Kamath and Steinke, "The Discrete
//! Gaussian for Differential Privacy", NeurIPS 2020, Algorithms 1–2). Floating-point
//! Laplace noise leaks through its low bits (Mironov, CCS 2012), so none is used here.
//!
//! Randomness comes from a `RandomSource`: the OS CSPRNG in the node
//! (`publish::OsRandom`); tests inject a seeded one. Pure otherwise.

/// Uniform random bits.
pub trait RandomSource {
    fn next_u64(&mut self) -> u64;
}

/// A uniform integer in `0..n` (`n >= 1`), by rejection: no modulo bias.
pub fn uniform_below(rng: &mut impl RandomSource, n: u64) -> u64 {
    if n <= 1 {
        return 0;
    }
    // Values below `reject` would make `x % n` favour small results: 2^64 - reject is a
    // multiple of n.
    let reject = n.wrapping_neg() % n;
    loop {
        let x = rng.next_u64();
        if x >= reject {
            return x % n;
        }
    }
}

/// True with probability `a / b` (`0 <= a <= b`, `b >= 1`).
pub fn bernoulli(rng: &mut impl RandomSource, a: u64, b: u64) -> bool {
    uniform_below(rng, b) < a
}

/// True with probability `exp(-a/b)` for `0 <= a/b <= 1`.
fn bernoulli_exp_le1(rng: &mut impl RandomSource, a: u64, b: u64) -> bool {
    let mut k: u64 = 1;
    loop {
        // P(continue) = (a/b) / k
        let den = (b as u128) * (k as u128);
        let den = u64::try_from(den).unwrap_or(u64::MAX);
        if bernoulli(rng, a.min(den), den) {
            k += 1;
        } else {
            return k % 2 == 1;
        }
    }
}

/// True with probability `exp(-a/b)` for any `a/b >= 0`.
pub fn bernoulli_exp(rng: &mut impl RandomSource, a: u64, b: u64) -> bool {
    let mut a = a;
    while a > b {
        if !bernoulli_exp_le1(rng, 1, 1) {
            return false;
        }
        a -= b;
    }
    bernoulli_exp_le1(rng, a, b)
}

/// A sample of the discrete Laplace distribution with scale `t/s` (positive integers):
/// `P(x) ∝ exp(-|x| · s / t)` over all integers.
pub fn discrete_laplace(rng: &mut impl RandomSource, t: u64, s: u64) -> i64 {
    let (t, s) = (t.max(1), s.max(1));
    loop {
        let u = uniform_below(rng, t);
        if !bernoulli_exp(rng, u, t) {
            continue;
        }
        let mut v: u64 = 0;
        while bernoulli_exp(rng, 1, 1) {
            v += 1;
        }
        let x = u + t.saturating_mul(v);
        let y = x / s;
        let negative = bernoulli(rng, 1, 2);
        if negative && y == 0 {
            continue;
        }
        let y = i64::try_from(y).unwrap_or(i64::MAX);
        return if negative { -y } else { y };
    }
}

/// The listener-count threshold of Laplace partition selection
/// (google/differential-privacy `LaplacePartitionSelection`), with pre-threshold `k`,
/// computed from the **discrete** Laplace distribution the noise is drawn from (its tail
/// is heavier than the continuous one's, so the continuous formula under-states δ).
///
/// An item is published only if its true listeners ≥ k and listeners + noise ≥ τ. One
/// user changes an item's listener count by 1, so the worst case is an item with exactly
/// k listeners with the user and k − 1 (never considered) without: it appears with
/// probability P(X ≥ τ − k). A user touches at most L0 items per chart, so by the union
/// bound the chart fails with probability at most L0 · P(X ≥ τ − k); τ is the smallest
/// integer for which that is ≤ δ. For the discrete Laplace with scale b = t/s,
/// P(X = x) = (1 − p)/(1 + p) · p^|x| with p = e^(−s/t), so P(X ≥ m) = p^m / (1 + p) for
/// m ≥ 1 (a closed form, summed exactly in the tests). τ depends only on public
/// parameters, so computing it in floating point leaks nothing; a relative margin of
/// 10⁻⁹ keeps rounding on the safe side.
pub fn partition_threshold(t: u64, s: u64, l0: u32, delta: f64, k: u32) -> i64 {
    let ln_p = -(s.max(1) as f64) / (t.max(1) as f64);
    let ln_target = (delta / f64::from(l0.max(1))).ln() + (1.0 - 1e-9f64).ln();
    // ln P(X ≥ m) = m·ln p − ln(1 + p), decreasing in m.
    let ln_tail = |m: i64| m as f64 * ln_p - ln_p.exp().ln_1p();
    let mut m = ((ln_target + ln_p.exp().ln_1p()) / ln_p).ceil().max(1.0) as i64;
    while m > 1 && ln_tail(m - 1) <= ln_target {
        m -= 1;
    }
    while ln_tail(m) > ln_target {
        m += 1;
    }
    m + i64::from(k.max(1))
}

/// The exact probability that an item of exactly `k` listeners (one of them the user)
/// is published, P(X ≥ τ − k), times L0: the δ one chart spends. Summed term by term
/// from the pmf rather than from the closed form `partition_threshold` uses.
pub fn partition_delta(t: u64, s: u64, l0: u32, tau: i64, k: u32) -> f64 {
    let p = (-(s.max(1) as f64) / (t.max(1) as f64)).exp();
    let norm = (1.0 - p) / (1.0 + p);
    let from = tau - i64::from(k);
    let mut sum = 0.0f64;
    let mut x = from;
    loop {
        let term = norm * p.powf(x.unsigned_abs() as f64);
        sum += term;
        if x > 0 && term < sum * 1e-18 {
            break;
        }
        x += 1;
    }
    f64::from(l0.max(1)) * sum
}

/// splitmix64: a seeded source, for tests and the federation simulator (the node's
/// releases use `publish::OsRandom`).
pub(crate) struct Seeded(pub u64);

impl RandomSource for Seeded {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exact pmf of the discrete Laplace with scale `t' = t/s`.
    fn pmf(x: i64, scale: f64) -> f64 {
        let a = (1.0 / scale).exp();
        (a - 1.0) / (a + 1.0) * (-(x.abs() as f64) / scale).exp()
    }

    /// χ² goodness of fit of `n` samples against the exact pmf; bins |x| beyond where
    /// the expected count drops under 5 are pooled in the tails.
    fn chi_square(t: u64, s: u64, n: usize, seed: u64) -> (f64, usize) {
        let scale = t as f64 / s as f64;
        let mut rng = Seeded(seed);
        let mut counts = std::collections::BTreeMap::<i64, u64>::new();
        for _ in 0..n {
            *counts.entry(discrete_laplace(&mut rng, t, s)).or_default() += 1;
        }
        let mut limit = 0i64;
        while pmf(limit + 1, scale) * n as f64 >= 5.0 {
            limit += 1;
        }
        let mut chi = 0.0;
        let mut bins = 0;
        for x in -limit..=limit {
            let expected = pmf(x, scale) * n as f64;
            let observed = *counts.get(&x).unwrap_or(&0) as f64;
            chi += (observed - expected).powi(2) / expected;
            bins += 1;
        }
        for side in [-1i64, 1] {
            let tail_p: f64 = (limit + 1..limit + 10_000).map(|x| pmf(side * x, scale)).sum();
            let expected = tail_p * n as f64;
            let observed: u64 = counts.iter().filter(|(x, _)| side * **x > limit).map(|(_, c)| *c).sum();
            if expected > 0.0 {
                chi += (observed as f64 - expected).powi(2) / expected;
                bins += 1;
            }
        }
        (chi, bins - 1)
    }

    #[test]
    fn samples_follow_the_exact_discrete_laplace_pmf() {
        // Critical values of χ² at p = 0.001 are below dof + 4·√(2·dof) + 10 for these dofs.
        for (t, s) in [(1, 1), (3, 1), (15, 4), (10, 1), (40, 3)] {
            let (chi, dof) = chi_square(t, s, 200_000, t * 1000 + s);
            let critical = dof as f64 + 4.0 * (2.0 * dof as f64).sqrt() + 10.0;
            assert!(
                chi < critical,
                "scale {t}/{s}: χ² = {chi:.1} with {dof} degrees of freedom (critical {critical:.1})"
            );
        }
    }

    #[test]
    fn bernoulli_exp_has_the_right_mean() {
        let mut rng = Seeded(7);
        for (a, b) in [(1u64, 2u64), (1, 1), (5, 2), (0, 1)] {
            let n = 100_000;
            let hits = (0..n).filter(|_| bernoulli_exp(&mut rng, a, b)).count() as f64 / n as f64;
            let want = (-(a as f64) / b as f64).exp();
            assert!((hits - want).abs() < 0.01, "exp(-{a}/{b}): {hits} vs {want}");
        }
    }

    #[test]
    fn thresholds_are_the_smallest_whose_exact_delta_meets_the_budget() {
        // (ε in thousandths, L0, δ, k); the scale is b = L0/ε = (1000·L0)/ε_milli.
        for (eps_milli, l0, delta, k) in [
            (1000u64, 1u32, 1e-7, 10u32),
            (1000, 3, 1e-7, 10),
            (500, 3, 1e-7, 10),
            (2000, 3, 1e-7, 10),
            (800, 3, 1e-7, 10),
            (60, 1, 5e-8, 10),
            (50_000, 3, 1e-7, 2),
        ] {
            let (t, s) = (1000 * u64::from(l0), eps_milli);
            let tau = partition_threshold(t, s, l0, delta, k);
            let at = partition_delta(t, s, l0, tau, k);
            let below = partition_delta(t, s, l0, tau - 1, k);
            assert!(at <= delta, "ε {eps_milli}/1000, L0 {l0}: δ at τ = {tau} is {at:e} > {delta:e}");
            assert!(below > delta, "ε {eps_milli}/1000, L0 {l0}: τ − 1 = {} already meets δ ({below:e})", tau - 1);
            // The continuous formula (τ_c = k − b·ln(2δ/L0)) is below the exact one: it
            // would have spent more δ than allowed.
            let b = t as f64 / s as f64;
            let continuous = (f64::from(k) - b * (2.0 * delta / f64::from(l0)).ln()).ceil() as i64;
            assert!(tau >= continuous, "exact τ {tau} below the continuous {continuous}");
        }
        // The figure: at ε 0.8, L0 3, δ 1e-7, k 10 the old (continuous) τ = 72
        // spent δ ≈ 1.7e-7 of the noise actually drawn; the exact τ is higher.
        let over = partition_delta(3000, 800, 3, 72, 10);
        assert!(over > 1e-7, "{over:e}");
        assert!(partition_threshold(3000, 800, 3, 1e-7, 10) > 72);
    }

    #[test]
    fn uniform_below_covers_its_range_evenly() {
        let mut rng = Seeded(3);
        let mut seen = [0u32; 7];
        for _ in 0..70_000 {
            seen[uniform_below(&mut rng, 7) as usize] += 1;
        }
        assert!(seen.iter().all(|c| (9_300..10_700).contains(c)), "{seen:?}");
    }
}
