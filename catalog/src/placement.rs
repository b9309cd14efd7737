//! Bucket placement: which shard owns each bucket, and which buckets move when the set
//! of shards changes (SPEC §4, "Consistent placement").
//!
//! A bucket map is a `Vec<ShardId>` indexed by bucket number. Everything here is a pure
//! function over it, so shardd's reconciler can compute a plan, persist it, carry it out
//! one bucket at a time and, after a crash, compute the rest of the plan again from the
//! map as it then is: every planning function is deterministic and, given a
//! half-applied plan, returns the remaining moves.
//!
//! The rules, with `B` buckets and `N` shards:
//! - *Balance*: every shard holds `floor(B/N)` or `ceil(B/N)` buckets.
//! - *Adding* a shard moves `floor(B/(N+1))` buckets, all onto the new shard, each taken
//!   from the currently most loaded shard; nothing else moves.
//! - *Removing* a shard moves only its buckets, each onto the currently least loaded
//!   remaining shard.
//! - *Rebalancing* onto a given set of shards makes the fewest moves that reach balance.
//!
//! The planning functions also take the list of shards: with fewer buckets than shards,
//! or while another addition is pending, a shard can hold no bucket, and the map alone
//! would not show it.
//!
//! Ties are broken by the lower shard id and buckets are taken from a shard
//! highest-numbered first, which makes every plan deterministic. Shard ids need not be
//! contiguous (ids are never reused, so removals leave gaps).

use crate::types::{BucketId, ShardId};
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

/// One step of a plan: move `bucket` from shard `from` to shard `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BucketMove {
    pub bucket: BucketId,
    pub from: ShardId,
    pub to: ShardId,
}

/// A placement request that cannot be satisfied, or a plan that does not fit the map.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("cannot remove shard {0}: it is the only shard holding buckets")]
    LastShard(ShardId),
    #[error("no shards to place {0} buckets on")]
    NoShards(u32),
    #[error("bucket {bucket} does not exist in a map of {buckets} buckets")]
    NoSuchBucket { bucket: BucketId, buckets: u32 },
    #[error("bucket {} is on shard {actual}, expected shard {} or {}", .step.bucket, .step.from, .step.to)]
    StaleMove { step: BucketMove, actual: ShardId },
}

/// The most buckets a shard may hold when `buckets` are spread over `shards` shards:
/// `ceil(buckets / shards)`; 0 when there are no shards.
pub fn max_per_shard(buckets: u32, shards: usize) -> u32 {
    match u32::try_from(shards) {
        Ok(0) => 0,
        Ok(n) => buckets.div_ceil(n),
        // More shards than any u32 bucket count: at most one bucket each.
        Err(_) => u32::from(buckets > 0),
    }
}

/// The number of buckets each shard holds. Shards holding none are absent.
pub fn counts(map: &[ShardId]) -> BTreeMap<ShardId, u32> {
    let mut counts = BTreeMap::new();
    for shard in map {
        *counts.entry(*shard).or_insert(0) += 1;
    }
    counts
}

/// The bucket map of a new cluster: buckets dealt round-robin over the shards in id
/// order, so every shard holds `floor(B/N)` or `ceil(B/N)`.
///
/// Duplicate ids count once. With no shards the map is empty; the config requires at
/// least one shard, so callers never ask for that.
pub fn initial(buckets: u32, shards: &[ShardId]) -> Vec<ShardId> {
    let shards: Vec<ShardId> = distinct(shards).into_iter().collect();
    if shards.is_empty() {
        return Vec::new();
    }
    (0..buckets as usize)
        .map(|b| shards[b % shards.len()])
        .collect()
}

/// The moves that bring shard `new` to its fair share `floor(B/(N+1))`, where `N + 1`
/// counts `new` and the other shards (those in `shards` and any holding buckets in the
/// map; `shards` may include `new`). Every move goes onto `new`, each taken from the
/// currently most loaded other shard, so a balanced map stays balanced.
///
/// The shard list matters because a shard may hold no bucket at all (fewer buckets than
/// shards, or another addition not yet carried out), and the map cannot show it.
///
/// If `new` already holds buckets (an addition interrupted half-way), only the missing
/// ones move; once it holds its share, the plan is empty.
pub fn moves_for_add(map: &[ShardId], shards: &[ShardId], new: ShardId) -> Vec<BucketMove> {
    let mut held = holdings(map, shards);
    let already = held.remove(&new).map_or(0, |b| b.len());
    let fair_share = map.len() / (held.len() + 1);

    let mut moves = Vec::new();
    for _ in already..fair_share {
        let Some((&from, buckets)) = held
            .iter_mut()
            .max_by_key(|(id, buckets)| (buckets.len(), Reverse(**id)))
        else {
            break;
        };
        let Some(bucket) = buckets.pop() else {
            break;
        };
        moves.push(BucketMove {
            bucket,
            from,
            to: new,
        });
    }
    moves
}

/// The map after adding shard `new` (see [`moves_for_add`]).
pub fn add_shard(map: &[ShardId], shards: &[ShardId], new: ShardId) -> Vec<ShardId> {
    apply_unchecked(map, &moves_for_add(map, shards, new))
}

/// The moves that empty shard `gone`: each of its buckets, lowest-numbered first, goes
/// to the currently least loaded other shard (from `shards`, which may include `gone`,
/// and any shard holding buckets in the map). Nothing else moves. Empty if `gone`
/// holds no buckets (already removed).
pub fn remove_shard(
    map: &[ShardId],
    shards: &[ShardId],
    gone: ShardId,
) -> Result<Vec<BucketMove>, PlacementError> {
    let mut held = holdings(map, shards);
    let leaving = held.remove(&gone).unwrap_or_default();
    if leaving.is_empty() {
        return Ok(Vec::new());
    }
    let mut load: BTreeMap<ShardId, usize> = held
        .iter()
        .map(|(id, buckets)| (*id, buckets.len()))
        .collect();
    if load.is_empty() {
        return Err(PlacementError::LastShard(gone));
    }
    let mut moves = Vec::with_capacity(leaving.len());
    for bucket in leaving {
        let Some((&to, count)) = load.iter_mut().min_by_key(|(id, count)| (**count, **id)) else {
            break;
        };
        *count += 1;
        moves.push(BucketMove {
            bucket,
            from: gone,
            to,
        });
    }
    Ok(moves)
}

/// The fewest moves that leave exactly the shards in `shards` holding buckets, each
/// `floor(B/N)` or `ceil(B/N)`. Buckets on shards not in `shards` all move.
///
/// Which shards get the `B mod N` larger shares decides how many buckets move; giving
/// them to the shards that hold the most already is optimal. Then every shard either
/// only gives or only receives, and each move fixes one unit of imbalance.
pub fn rebalance(map: &[ShardId], shards: &[ShardId]) -> Result<Vec<BucketMove>, PlacementError> {
    let targets = target_counts(map, shards)?;
    let mut held = holdings(map, &[]);

    // Surplus buckets, highest-numbered first from each shard, shards in id order.
    let mut surplus = Vec::new();
    for (id, buckets) in &mut held {
        let keep = targets.get(id).copied().unwrap_or(0);
        while buckets.len() > keep {
            if let Some(bucket) = buckets.pop() {
                surplus.push((bucket, *id));
            }
        }
    }

    // Fill the shards below target, in id order.
    let mut surplus = surplus.into_iter();
    let mut moves = Vec::new();
    for (to, target) in &targets {
        let have = held.get(to).map_or(0, |b| b.len());
        for (bucket, from) in surplus.by_ref().take(target.saturating_sub(have)) {
            moves.push(BucketMove {
                bucket,
                from,
                to: *to,
            });
        }
    }
    Ok(moves)
}

/// The map after `moves`. A move whose bucket is already on its `to` shard is skipped,
/// so replaying a partly applied plan is safe; a bucket found on any third shard means
/// the plan is stale and is refused whole.
pub fn apply(map: &[ShardId], moves: &[BucketMove]) -> Result<Vec<ShardId>, PlacementError> {
    let mut out = map.to_vec();
    for step in moves {
        let buckets = u32::try_from(out.len()).unwrap_or(u32::MAX);
        let slot = out
            .get_mut(step.bucket.0 as usize)
            .ok_or(PlacementError::NoSuchBucket {
                bucket: step.bucket,
                buckets,
            })?;
        if *slot != step.from && *slot != step.to {
            return Err(PlacementError::StaleMove {
                step: *step,
                actual: *slot,
            });
        }
        *slot = step.to;
    }
    Ok(out)
}

/// `apply` for plans this module just computed from the same map, which always fit.
fn apply_unchecked(map: &[ShardId], moves: &[BucketMove]) -> Vec<ShardId> {
    let mut out = map.to_vec();
    for step in moves {
        if let Some(slot) = out.get_mut(step.bucket.0 as usize) {
            *slot = step.to;
        }
    }
    out
}

/// Each shard's buckets in ascending order: the shards holding buckets in the map and
/// those in `shards` (possibly holding none).
fn holdings(map: &[ShardId], shards: &[ShardId]) -> BTreeMap<ShardId, Vec<BucketId>> {
    let mut held: BTreeMap<ShardId, Vec<BucketId>> =
        shards.iter().map(|id| (*id, Vec::new())).collect();
    for (bucket, shard) in map.iter().enumerate() {
        // A map longer than u32::MAX buckets cannot be built from a u32 bucket count.
        let bucket = BucketId(u32::try_from(bucket).unwrap_or(u32::MAX));
        held.entry(*shard).or_default().push(bucket);
    }
    held
}

fn distinct(shards: &[ShardId]) -> BTreeSet<ShardId> {
    shards.iter().copied().collect()
}

/// How many buckets each shard in `shards` should hold after a rebalance: `B/N`, plus
/// one for the `B mod N` shards holding the most now (lower id first on ties).
fn target_counts(
    map: &[ShardId],
    shards: &[ShardId],
) -> Result<BTreeMap<ShardId, usize>, PlacementError> {
    let shards = distinct(shards);
    if shards.is_empty() {
        return match map.len() {
            0 => Ok(BTreeMap::new()),
            n => Err(PlacementError::NoShards(
                u32::try_from(n).unwrap_or(u32::MAX),
            )),
        };
    }
    let current = counts(map);
    let mut by_load: Vec<ShardId> = shards.into_iter().collect();
    by_load.sort_by_key(|id| (Reverse(current.get(id).copied().unwrap_or(0)), *id));

    let (share, extra) = (map.len() / by_load.len(), map.len() % by_load.len());
    Ok(by_load
        .into_iter()
        .enumerate()
        .map(|(rank, id)| (id, share + usize::from(rank < extra)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::sample::select;

    const BUCKET_COUNTS: [u32; 6] = [1, 7, 64, 1000, 1024, 4096];

    fn ids(raw: &[u32]) -> Vec<ShardId> {
        raw.iter().copied().map(ShardId).collect()
    }

    /// `n` distinct, non-contiguous shard ids (in random order).
    fn shard_ids(n: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = Vec<ShardId>> {
        proptest::collection::btree_set(0u32..10_000, n)
            .prop_map(|set| set.into_iter().map(ShardId).collect::<Vec<_>>())
            .prop_shuffle()
    }

    /// Max minus min bucket count over `shards` (shards holding nothing count as 0).
    fn spread(map: &[ShardId], shards: &[ShardId]) -> u32 {
        let c = counts(map);
        let per: Vec<u32> = shards
            .iter()
            .map(|s| c.get(s).copied().unwrap_or(0))
            .collect();
        per.iter().max().unwrap_or(&0) - per.iter().min().unwrap_or(&0)
    }

    fn max_count(map: &[ShardId]) -> u32 {
        counts(map).values().copied().max().unwrap_or(0)
    }

    /// The buckets whose owner differs between two maps.
    fn changed(before: &[ShardId], after: &[ShardId]) -> Vec<usize> {
        (0..before.len())
            .filter(|&b| before[b] != after[b])
            .collect()
    }

    #[test]
    fn initial_deals_round_robin_in_id_order() {
        let map = initial(5, &ids(&[9, 3, 3]));
        assert_eq!(map, ids(&[3, 9, 3, 9, 3]));
        assert!(initial(5, &[]).is_empty());
    }

    #[test]
    fn add_takes_from_the_most_loaded() {
        // 3 holds 3 buckets, 9 holds 2: fair share for 3 shards is 1.
        let map = ids(&[3, 9, 3, 9, 3]);
        let moves = moves_for_add(&map, &ids(&[3, 9]), ShardId(5));
        assert_eq!(
            moves,
            vec![BucketMove {
                bucket: BucketId(4),
                from: ShardId(3),
                to: ShardId(5)
            }]
        );
    }

    #[test]
    fn shards_without_buckets_take_part() {
        // One bucket, two shards: removing the holder hands it to the empty shard.
        let map = initial(1, &ids(&[1, 2]));
        assert_eq!(map, ids(&[1]));
        assert_eq!(
            remove_shard(&map, &ids(&[1, 2]), ShardId(1)).map(|m| apply_unchecked(&map, &m)),
            Ok(ids(&[2]))
        );
        // Two additions planned before either is carried out: the second counts the
        // first, which holds nothing yet, so it takes 1024/4 and not 1024/3.
        let map = initial(1024, &ids(&[1, 2]));
        assert_eq!(moves_for_add(&map, &ids(&[1, 2, 3]), ShardId(4)).len(), 256);
    }

    #[test]
    fn removing_the_last_shard_is_refused() {
        let map = initial(4, &ids(&[1]));
        assert_eq!(
            remove_shard(&map, &ids(&[1]), ShardId(1)),
            Err(PlacementError::LastShard(ShardId(1)))
        );
        assert_eq!(remove_shard(&map, &ids(&[1]), ShardId(2)), Ok(vec![]));
    }

    #[test]
    fn rebalance_needs_a_shard() {
        let map = initial(4, &ids(&[1]));
        assert_eq!(rebalance(&map, &[]), Err(PlacementError::NoShards(4)));
        assert_eq!(rebalance(&[], &[]), Ok(vec![]));
    }

    #[test]
    fn apply_refuses_stale_and_out_of_range_moves() {
        let map = ids(&[1, 2]);
        let step = BucketMove {
            bucket: BucketId(0),
            from: ShardId(2),
            to: ShardId(3),
        };
        assert_eq!(
            apply(&map, &[step]),
            Err(PlacementError::StaleMove {
                step,
                actual: ShardId(1)
            })
        );
        let far = BucketMove {
            bucket: BucketId(2),
            ..step
        };
        assert!(matches!(
            apply(&map, &[far]),
            Err(PlacementError::NoSuchBucket { .. })
        ));
    }

    #[test]
    fn max_per_shard_is_ceiling() {
        assert_eq!(max_per_shard(1024, 3), 342);
        assert_eq!(max_per_shard(1024, 4), 256);
        assert_eq!(max_per_shard(7, 32), 1);
        assert_eq!(max_per_shard(7, 0), 0);
    }

    proptest! {
        #[test]
        fn initial_is_balanced(b in select(&BUCKET_COUNTS[..]), shards in shard_ids(1..=32)) {
            let map = initial(b, &shards);
            prop_assert_eq!(map.len(), b as usize);
            prop_assert!(max_count(&map) <= max_per_shard(b, shards.len()));
            prop_assert!(spread(&map, &shards) <= 1);
            prop_assert_eq!(initial(b, &shards), map);
        }

        #[test]
        fn add_moves_only_onto_the_new_shard(
            b in select(&BUCKET_COUNTS[..]),
            shards in shard_ids(2..=33),
        ) {
            let (new, existing) = shards.split_last().expect("at least two ids");
            let map = initial(b, existing);
            let moves = moves_for_add(&map, existing, *new);
            prop_assert_eq!(&moves_for_add(&map, &shards, *new), &moves, "new may be listed");
            let n1 = shards.len() as u32;

            prop_assert_eq!(moves.len() as u32, b / n1);
            prop_assert!(moves.len() as u32 <= max_per_shard(b, shards.len()));
            for m in &moves {
                prop_assert_eq!(m.to, *new);
                prop_assert_eq!(map[m.bucket.0 as usize], m.from);
            }
            let after = apply(&map, &moves).expect("plan fits its map");
            prop_assert_eq!(&after, &add_shard(&map, existing, *new));
            prop_assert_eq!(changed(&map, &after).len(), moves.len());
            prop_assert!(max_count(&after) <= max_per_shard(b, shards.len()));
            prop_assert!(spread(&after, &shards) <= 1);
            prop_assert_eq!(moves_for_add(&map, existing, *new), moves, "deterministic");
        }

        #[test]
        fn remove_moves_only_the_removed_shards_buckets(
            b in select(&BUCKET_COUNTS[..]),
            shards in shard_ids(2..=32),
            pick in any::<proptest::sample::Index>(),
        ) {
            let map = initial(b, &shards);
            let gone = *pick.get(&shards);
            let moves = remove_shard(&map, &shards, gone).expect("another shard remains");
            let held = counts(&map).get(&gone).copied().unwrap_or(0);

            prop_assert_eq!(moves.len() as u32, held);
            let after = apply(&map, &moves).expect("plan fits its map");
            for bucket in changed(&map, &after) {
                prop_assert_eq!(map[bucket], gone);
            }
            prop_assert!(!after.contains(&gone));
            let rest: Vec<ShardId> = shards.iter().copied().filter(|s| *s != gone).collect();
            prop_assert!(max_count(&after) <= max_per_shard(b, rest.len()));
            prop_assert!(spread(&after, &rest) <= 1);
            prop_assert_eq!(remove_shard(&map, &shards, gone), Ok(moves), "deterministic");
        }

        /// Any history of additions and removals keeps the map balanced, and each step
        /// moves no more than it must.
        #[test]
        fn histories_stay_balanced(
            b in select(&BUCKET_COUNTS[..]),
            start in 1usize..=8,
            ops in proptest::collection::vec((any::<bool>(), any::<proptest::sample::Index>()), 1..24),
        ) {
            let mut shards: Vec<ShardId> = (0..start as u32).map(|i| ShardId(i * 3 + 1)).collect();
            let mut next_id = 100;
            let mut map = initial(b, &shards);
            for (add, pick) in ops {
                let before = map.clone();
                if add || shards.len() == 1 {
                    let new = ShardId(next_id);
                    next_id += 7;
                    let moves = moves_for_add(&map, &shards, new);
                    prop_assert!(moves.iter().all(|m| m.to == new));
                    prop_assert!(moves.len() as u32 <= max_per_shard(b, shards.len() + 1));
                    map = apply(&map, &moves).expect("plan fits its map");
                    shards.push(new);
                } else {
                    let gone = *pick.get(&shards);
                    let moves = remove_shard(&map, &shards, gone).expect("another shard remains");
                    prop_assert!(moves.iter().all(|m| m.from == gone));
                    map = apply(&map, &moves).expect("plan fits its map");
                    shards.retain(|s| *s != gone);
                }
                prop_assert!(max_count(&map) <= max_per_shard(b, shards.len()));
                prop_assert!(spread(&map, &shards) <= 1);
                prop_assert_eq!(rebalance(&map, &shards), Ok(vec![]), "already balanced");
                prop_assert_eq!(map.len(), before.len());
            }
        }

        /// A plan interrupted after any number of steps can be recomputed from the
        /// half-moved map; the remaining steps complete it to the same balance.
        #[test]
        fn interrupted_plans_resume(
            b in select(&BUCKET_COUNTS[..]),
            shards in shard_ids(2..=32),
            done in any::<proptest::sample::Index>(),
        ) {
            let (new, existing) = shards.split_last().expect("at least two ids");
            let map = initial(b, existing);
            let moves = moves_for_add(&map, existing, *new);
            let cut = if moves.is_empty() { 0 } else { done.index(moves.len()) };
            let half = apply(&map, &moves[..cut]).expect("plan fits its map");
            let rest = moves_for_add(&half, &shards, *new);
            prop_assert_eq!(cut + rest.len(), moves.len());
            let after = apply(&half, &rest).expect("plan fits its map");
            prop_assert!(max_count(&after) <= max_per_shard(b, shards.len()));
            // Replaying the whole original plan on top is harmless.
            prop_assert_eq!(apply(&after, &moves[..cut]), Ok(after.clone()));

            let gone = existing[0];
            let moves = remove_shard(&after, &shards, gone).expect("another shard remains");
            let cut = if moves.is_empty() { 0 } else { done.index(moves.len()) };
            let half = apply(&after, &moves[..cut]).expect("plan fits its map");
            let rest = remove_shard(&half, &shards, gone).expect("another shard remains");
            prop_assert_eq!(cut + rest.len(), moves.len());
            let done = apply(&half, &rest).expect("plan fits its map");
            prop_assert!(!done.contains(&gone));
            prop_assert!(max_count(&done) <= max_per_shard(b, shards.len() - 1));
        }

        /// From any map (however skewed) onto any set of shards: balanced after, no
        /// shard both gives and receives, and the number of moves is the lower bound.
        #[test]
        fn rebalance_is_minimal(
            b in select(&BUCKET_COUNTS[..]),
            owners in shard_ids(1..=12),
            targets in shard_ids(1..=32),
            seed in any::<u64>(),
        ) {
            // A skewed map: bucket i on owners[hash(i) % k] with a biased hash.
            let map: Vec<ShardId> = (0..b as u64)
                .map(|i| {
                    let x = (i ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
                    owners[((x * x) as usize / 7) % owners.len()]
                })
                .collect();
            let moves = rebalance(&map, &targets).expect("targets are not empty");
            let after = apply(&map, &moves).expect("plan fits its map");

            prop_assert!(after.iter().all(|s| targets.contains(s)));
            prop_assert!(spread(&after, &targets) <= 1);
            prop_assert_eq!(changed(&map, &after).len(), moves.len());
            let givers: BTreeSet<ShardId> = moves.iter().map(|m| m.from).collect();
            let takers: BTreeSet<ShardId> = moves.iter().map(|m| m.to).collect();
            prop_assert!(givers.is_disjoint(&takers));

            // The optimum: every bucket on a shard outside the targets moves, and every
            // target shard gives what exceeds its share, the r larger shares going to
            // the r most loaded shards (an exchange argument shows no other choice of
            // the larger shares needs fewer moves).
            let n = targets.len();
            let (q, r) = (b as usize / n, b as usize % n);
            let current = counts(&map);
            let mut loads: Vec<usize> = targets
                .iter()
                .map(|t| current.get(t).copied().unwrap_or(0) as usize)
                .collect();
            loads.sort_unstable_by(|x, y| y.cmp(x));
            let off_target = map.iter().filter(|s| !targets.contains(s)).count();
            let excess: usize = loads
                .iter()
                .enumerate()
                .map(|(rank, load)| load.saturating_sub(q + usize::from(rank < r)))
                .sum();
            prop_assert_eq!(moves.len(), off_target + excess);
            prop_assert_eq!(rebalance(&map, &targets), Ok(moves), "deterministic");
        }
    }
}
