//! Picking one node among those fit to serve a read (`router.read_policy`, SPEC §8):
//! pure functions over a candidate list, so the distribution guarantees are tested
//! without sockets.
//!
//! - `round_robin`: a shared counter modulo the total weight;
//! - `random`: a uniform draw over the total weight;
//! - `least_outstanding`: the fewest reads in flight per unit of weight, ties broken
//!   from a rotating start so equal nodes share the load;
//! - `hash`: rendezvous (highest-random-weight) hashing. Every (key, node) pair gets
//!   a pseudo-random score and the key goes to the highest; weights use the
//!   logarithmic method (`-w / ln(u)`), which keeps the shares proportional to the
//!   weights. Removing a node moves only the keys it had (each to its second choice);
//!   adding one moves only the keys it now wins, about 1/n of them.

use pgshard_catalog::NodeId;

/// One node a read may go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub node: NodeId,
    /// Relative share (at least 1; nodes of weight 0 are never candidates).
    pub weight: u32,
    /// Reads in flight on it from this router.
    pub outstanding: u64,
}

/// How to pick, with the draw or key it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// The next value of the router's round-robin counter.
    RoundRobin(u64),
    /// A uniformly random number.
    Random(u64),
    /// The rotating tie-breaker (any counter).
    LeastOutstanding(u64),
    /// The hash of the key (bucket, session, client address).
    Hash(u64),
}

/// The index of the chosen candidate, `None` for an empty list.
pub fn pick(cands: &[Candidate], how: Pick) -> Option<usize> {
    if cands.is_empty() {
        return None;
    }
    match how {
        Pick::RoundRobin(n) | Pick::Random(n) => Some(by_weight(cands, n)),
        Pick::LeastOutstanding(n) => Some(least_outstanding(cands, n)),
        Pick::Hash(key) => Some(rendezvous(cands, key)),
    }
}

/// The candidate that position `n` modulo the total weight falls in.
fn by_weight(cands: &[Candidate], n: u64) -> usize {
    let total: u64 = cands.iter().map(|c| u64::from(c.weight.max(1))).sum();
    let mut at = n % total;
    for (i, c) in cands.iter().enumerate() {
        let w = u64::from(c.weight.max(1));
        if at < w {
            return i;
        }
        at -= w;
    }
    cands.len() - 1
}

fn least_outstanding(cands: &[Candidate], n: u64) -> usize {
    let len = cands.len();
    let start = (n % len as u64) as usize;
    let mut best = start;
    for k in 1..len {
        let i = (start + k) % len;
        // outstanding / weight compared without division.
        let (a, b) = (&cands[i], &cands[best]);
        if u128::from(a.outstanding) * u128::from(b.weight.max(1))
            < u128::from(b.outstanding) * u128::from(a.weight.max(1))
        {
            best = i;
        }
    }
    best
}

/// A 64-bit mix (splitmix64's finaliser): (key, node) to a well-spread score.
pub fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn rendezvous(cands: &[Candidate], key: u64) -> usize {
    let score = |c: &Candidate| -> f64 {
        let h = mix(key ^ mix(u64::from(c.node.0).wrapping_add(0x9e37_79b9_7f4a_7c15)));
        // u in (0, 1): 53 random bits, never 0.
        let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        -f64::from(c.weight.max(1)) / u.ln()
    };
    let mut best = 0;
    let mut best_score = f64::MIN;
    for (i, c) in cands.iter().enumerate() {
        let s = score(c);
        if s > best_score {
            best = i;
            best_score = s;
        }
    }
    best
}

/// FNV-1a of some bytes: the hash key of a session or client address.
pub fn key_of(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    mix(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: u32) -> Vec<Candidate> {
        (0..n)
            .map(|i| Candidate {
                node: NodeId(10 + i),
                weight: 1,
                outstanding: 0,
            })
            .collect()
    }

    fn ratio(counts: &[u64]) -> f64 {
        let max = counts.iter().copied().max().unwrap_or(0) as f64;
        let min = counts.iter().copied().min().unwrap_or(0) as f64;
        max / min
    }

    fn shares(cands: &[Candidate], picks: u64, how: impl Fn(u64) -> Pick) -> Vec<u64> {
        let mut counts = vec![0u64; cands.len()];
        for n in 0..picks {
            let i = pick(cands, how(n)).expect("non-empty");
            counts[i] += 1;
        }
        counts
    }

    #[test]
    fn round_robin_and_random_spread_evenly() {
        use rand::{Rng, SeedableRng};
        for n in [2, 3, 5] {
            let c = nodes(n);
            let rr = shares(&c, 100_000, Pick::RoundRobin);
            assert!(ratio(&rr) <= 1.10, "round robin over {n}: {rr:?}");
            let mut rng = rand::rngs::StdRng::seed_from_u64(7);
            let draws: Vec<u64> = (0..100_000).map(|_| rng.gen()).collect();
            let random = shares(&c, 100_000, |i| Pick::Random(draws[i as usize]));
            assert!(ratio(&random) <= 1.10, "random over {n}: {random:?}");
        }
    }

    #[test]
    fn hash_is_stable_and_even() {
        for n in [2, 3, 4] {
            let c = nodes(n);
            let keys: Vec<u64> = (0..100_000u64).map(|k| key_of(&k.to_le_bytes())).collect();
            let counts = shares(&c, 100_000, |i| Pick::Hash(keys[i as usize]));
            assert!(ratio(&counts) <= 1.15, "hash over {n}: {counts:?}");
            for k in keys.iter().take(1000) {
                assert_eq!(pick(&c, Pick::Hash(*k)), pick(&c, Pick::Hash(*k)));
            }
        }
    }

    #[test]
    fn removing_a_node_remaps_only_its_keys() {
        for n in [2u32, 3, 4, 5] {
            let all = nodes(n);
            let fewer: Vec<Candidate> = all[1..].to_vec();
            let keys: Vec<u64> = (0..100_000u64).map(|k| key_of(&k.to_le_bytes())).collect();
            let mut moved = 0u64;
            for k in &keys {
                let before = all[pick(&all, Pick::Hash(*k)).expect("some")].node;
                let after = fewer[pick(&fewer, Pick::Hash(*k)).expect("some")].node;
                if before != after {
                    moved += 1;
                    // Only keys of the removed node move.
                    assert_eq!(before, all[0].node);
                }
            }
            let share = moved as f64 / keys.len() as f64;
            assert!(
                share <= 1.0 / f64::from(n) + 0.05,
                "removing one of {n} moved {share}"
            );
        }
    }

    #[test]
    fn weights_shift_the_shares() {
        let mut c = nodes(2);
        c[1].weight = 3;
        let rr = shares(&c, 100_000, Pick::RoundRobin);
        assert_eq!(rr, vec![25_000, 75_000]);
        let keys: Vec<u64> = (0..100_000u64).map(|k| key_of(&k.to_le_bytes())).collect();
        let h = shares(&c, 100_000, |i| Pick::Hash(keys[i as usize]));
        let share = h[1] as f64 / 100_000.0;
        assert!((0.72..0.78).contains(&share), "{h:?}");
    }

    #[test]
    fn least_outstanding_prefers_the_idle_node_and_rotates_ties() {
        let mut c = nodes(3);
        c[0].outstanding = 4;
        c[1].outstanding = 1;
        c[2].outstanding = 2;
        for n in 0..10 {
            assert_eq!(pick(&c, Pick::LeastOutstanding(n)), Some(1));
        }
        let even = nodes(3);
        let counts = shares(&even, 30_000, Pick::LeastOutstanding);
        assert_eq!(counts, vec![10_000, 10_000, 10_000]);
        assert_eq!(pick(&[], Pick::RoundRobin(0)), None);
    }
}
