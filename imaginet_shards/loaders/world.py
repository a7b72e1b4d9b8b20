"""Who reads what: the partitioning of a shard set over ranks and epochs, and its resumption
(docs/architecture.md, "The loader contract").

Pure functions of (per-shard sample counts, world size, rank, seed, epoch, batch size, drop_last,
shuffle, shuffle buffer, resume legs); no processes, no I/O. Both loader backends deliver exactly
`rank_order`, so their contracts cannot drift apart, and neither depends on its worker count.

The scheme, for one epoch:

1. **Shard order**: the shards are permuted with a generator seeded by (seed, epoch) (identity when
   `shuffle` is off) and their samples concatenated into one epoch sequence of `total` positions.
2. **Ranks** take contiguous, equal-sized ranges of that sequence, so each rank reads a few whole
   shards and at most two partial ones, whatever the shard count:

   - `drop_last=True` (training): every rank gets `total // (world_size * batch_size)` full batches;
     the tail of the epoch sequence, `total % (world_size * batch_size)` samples
     (< world_size * batch_size), is dropped. As the shard order changes each epoch, so do the dropped
     samples.
   - `drop_last=False` (evaluation): nothing is dropped; every sample is read exactly once across
     ranks. Rank sizes differ by at most one sample; every rank yields the same number of batches,
     `ceil(total / (world_size * batch_size))`, the rank's last batch being partial. A rank's final
     batches can be smaller than `batch_size` and, only when the rank holds fewer samples than
     batches (tiny sets: fewer samples than ranks, or batch_size 1), empty (0 samples), which keeps
     the batch count equal on all ranks (no DDP hang).
3. **Local shuffle**: inside its range, a rank's samples are mixed by a jitter sort: each position
   gets a random offset in [0, shuffle_buffer) (seeded by (seed, epoch, rank)) and the range is sorted
   by position + offset. A sample moves by less than `shuffle_buffer` places, so reading stays local
   (a batch spans about `batch_size + shuffle_buffer` consecutive samples), like a shuffle buffer of
   that size but without state: any batch can be found without reading the ones before it.
4. **Batches** are consecutive runs of that order (`RankOrder.batch`); a backend may produce them on
   several workers but delivers them in order.

**Resumption**: an epoch interrupted after every rank delivered `k` batches is described by a `Leg`
(world size, batch size, k). What is left is each rank's order after its first k batches; those
remainders, concatenated in rank order, form the sequence the next leg partitions over its own world
size exactly as in step 2 (no new shuffle). On the same world size each rank therefore continues
with exactly its own remaining batches; on another, every sample still comes exactly once per epoch
(the first leg's drop_last tail stays dropped), and every rank gets the same number of batches.
Per-sample augmentation randomness is keyed by the sample (`sample_rng`), never by its position.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

# Domain tags keep the generators for different purposes independent for the same seed.
_SHARD_ORDER, _SAMPLE, _JITTER = 1, 3, 4  # (2 is retired: kept apart so seeds stay as they were)


@dataclass(frozen=True)
class EpochSpec:
    """Everything besides the shard counts that fixes the partition of one epoch."""

    world_size: int
    rank: int
    batch_size: int
    seed: int = 0
    epoch: int = 0
    drop_last: bool = True
    shuffle: bool = True

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in 0..{self.world_size - 1} "
                             f"(world size {self.world_size})")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.seed < 0 or self.epoch < 0:
            raise ValueError(f"seed and epoch must be >= 0, got seed={self.seed} epoch={self.epoch}")


def derive_seed(*parts: int | str) -> np.random.SeedSequence:
    """A SeedSequence from integers and strings (strings hashed with SHA-256): a stable, pure
    function of its arguments, independent of process, platform and PYTHONHASHSEED."""
    words: list[int] = []
    for part in parts:
        if isinstance(part, str):
            value = int.from_bytes(hashlib.sha256(part.encode()).digest()[:16], "little")
        elif part < 0:
            raise ValueError(f"seed parts must be >= 0, got {part}")
        else:
            value = int(part)
        # numpy's own reading of a list of integers (each as its 32-bit words, lowest first; 0 as
        # one word), done here at once: SeedSequence mixes the same words, twice as fast
        words.append(value & 0xFFFFFFFF)
        value >>= 32
        while value:
            words.append(value & 0xFFFFFFFF)
            value >>= 32
    return np.random.SeedSequence(np.array(words, dtype=np.uint32))


def shard_order(num_shards: int, seed: int, epoch: int, shuffle: bool = True) -> tuple[int, ...]:
    """The order in which the epoch visits the shards: a permutation fixed by (seed, epoch)."""
    if not shuffle:
        return tuple(range(num_shards))
    rng = np.random.default_rng(derive_seed(_SHARD_ORDER, seed, epoch))
    return tuple(int(i) for i in rng.permutation(num_shards))


def batches_per_rank(total: int, world_size: int, batch_size: int, drop_last: bool) -> int:
    """The batch count of every rank (the value of `len()` on every rank)."""
    per_round = world_size * batch_size
    return total // per_round if drop_last else -(-total // per_round)


def dropped_samples(total: int, world_size: int, batch_size: int, drop_last: bool) -> int:
    """How many samples an epoch leaves out to keep ranks equal (< world_size * batch_size)."""
    return total % (world_size * batch_size) if drop_last else 0


def rank_span(total: int, spec: EpochSpec) -> tuple[int, int]:
    """[start, stop) positions of `spec.rank` in the epoch sequence of `total` samples."""
    if spec.drop_last:
        size = batches_per_rank(total, spec.world_size, spec.batch_size, True) * spec.batch_size
        return spec.rank * size, (spec.rank + 1) * size
    return spec.rank * total // spec.world_size, (spec.rank + 1) * total // spec.world_size


def rank_batch_sizes(total: int, spec: EpochSpec) -> tuple[int, ...]:
    """The size of each batch of `spec.rank`, in order: full batches, and with drop_last=False the
    last ones shrunk so that the rank's samples fill exactly `batches_per_rank` batches (leaving at
    least one sample for every later batch while there are samples to share)."""
    start, stop = rank_span(total, spec)
    count = batches_per_rank(total, spec.world_size, spec.batch_size, spec.drop_last)
    left, sizes = stop - start, []
    for i in range(count):
        size = max(0, min(spec.batch_size, left - (count - 1 - i)))
        sizes.append(size)
        left -= size
    return tuple(sizes)


def sample_rng(seed: int, key: str, epoch: int | None) -> np.random.Generator:
    """The per-sample augmentation generator: a pure function of (seed, epoch, sample key), or of
    (seed, key) alone when `epoch` is None (presets with `per_sample_seed`, e.g. `social`), so that
    results never depend on batch size, worker or rank count."""
    parts: tuple[int | str, ...] = (_SAMPLE, seed, key) if epoch is None else (_SAMPLE, seed, epoch, key)
    return np.random.default_rng(derive_seed(*parts))


@dataclass(frozen=True)
class Leg:
    """Part of an epoch run on one world size before an interruption: every rank had delivered
    `batches` batches of `batch_size` (its per-rank batch size)."""

    world_size: int
    batch_size: int
    batches: int

    def __post_init__(self) -> None:
        if self.world_size < 1 or self.batch_size < 1 or self.batches < 0:
            raise ValueError(f"a leg needs world_size >= 1, batch_size >= 1 and batches >= 0, got {self}")


@dataclass(frozen=True)
class RankOrder:
    """What one rank delivers in one epoch (or in what is left of it after resume legs): its
    samples as (shard number in manifest order, sample number in the shard), in delivery order,
    cut into consecutive batches of `batch_sizes`."""

    shards: np.ndarray
    samples: np.ndarray
    batch_sizes: tuple[int, ...]
    _ends: np.ndarray = field(init=False, repr=False, compare=False)  # where each batch ends

    def __post_init__(self) -> None:
        object.__setattr__(self, "_ends", np.cumsum(self.batch_sizes, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.batch_sizes)

    def batch(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(shards, samples) of batch `i`."""
        stop = int(self._ends[i])
        start = stop - self.batch_sizes[i]
        return self.shards[start:stop], self.samples[start:stop]


def epoch_sequence(counts: Sequence[int], seed: int, epoch: int, shuffle: bool = True
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(shard, sample) of every position of the epoch sequence (step 1 of the module doc)."""
    if any(c < 0 for c in counts):
        raise ValueError(f"shard sample counts must be >= 0, got {list(counts)}")
    order = np.asarray(shard_order(len(counts), seed, epoch, shuffle), dtype=np.int64)
    sizes = np.asarray(counts, dtype=np.int64)[order] if len(order) else np.zeros(0, np.int64)
    shards = np.repeat(order, sizes)
    starts = np.cumsum(sizes) - sizes
    samples = np.arange(len(shards), dtype=np.int64) - np.repeat(starts, sizes)
    return shards, samples


def jitter(length: int, shuffle_buffer: int, rng: np.random.Generator) -> np.ndarray:
    """A permutation of range(length) that moves no item by `shuffle_buffer` places or more."""
    if shuffle_buffer <= 1 or length <= 1:
        return np.arange(length)
    keys = np.arange(length) + rng.uniform(0, shuffle_buffer, length)
    return np.argsort(keys, kind="stable")


def _rank_span(total: int, spec: EpochSpec, shuffle_buffer: int) -> tuple[np.ndarray, tuple[int, ...]]:
    """Positions (in a sequence of `total` samples) of `spec.rank`, in delivery order, and its batch
    sizes; jittered when `shuffle_buffer` > 1 and `spec.shuffle`."""
    start, _ = rank_span(total, spec)
    sizes = rank_batch_sizes(total, spec)
    span = np.arange(start, start + sum(sizes))
    if spec.shuffle and shuffle_buffer > 1:
        rng = np.random.default_rng(derive_seed(_JITTER, spec.seed, spec.epoch, spec.rank))
        span = span[jitter(len(span), shuffle_buffer, rng)]
    return span, sizes


def _check_divisible(remaining: int, spec: EpochSpec) -> None:
    if spec.drop_last and remaining % (spec.world_size * spec.batch_size):
        raise ValueError(
            f"the {remaining} samples left in epoch {spec.epoch} cannot be divided evenly into "
            f"batches of {spec.batch_size} on {spec.world_size} rank(s); keep the global batch "
            "size (world size x batch size) of the interrupted run")


def _after_legs(counts: Sequence[int], spec: EpochSpec, shuffle_buffer: int, legs: Sequence[Leg]
                ) -> tuple[np.ndarray, np.ndarray, int]:
    """(shards, samples) of the sequence the legs left of the epoch, and how many they delivered."""
    shards, samples = epoch_sequence(counts, spec.seed, spec.epoch, spec.shuffle)
    delivered = 0
    for number, leg in enumerate(legs):
        kept = []
        for rank in range(leg.world_size):
            leg_spec = EpochSpec(leg.world_size, rank, leg.batch_size, spec.seed, spec.epoch,
                                 spec.drop_last, spec.shuffle)
            if number > 0 and rank == 0:
                _check_divisible(len(shards), leg_spec)
            # only the first leg shuffles; later legs keep the remainders' order
            span, sizes = _rank_span(len(shards), leg_spec, shuffle_buffer if number == 0 else 0)
            if leg.batches > len(sizes):
                raise ValueError(f"leg {number} of epoch {spec.epoch} claims {leg.batches} "
                                 f"batches per rank, more than its {len(sizes)}")
            done = sum(sizes[:leg.batches])
            kept.append(span[done:])
            delivered += done
        left = np.concatenate(kept)
        shards, samples = shards[left], samples[left]
    if legs:
        _check_divisible(len(shards), spec)
    return shards, samples, delivered


def rank_order(counts: Sequence[int], spec: EpochSpec, shuffle_buffer: int = 0,
               legs: Sequence[Leg] = ()) -> RankOrder:
    """What rank `spec.rank` delivers in epoch `spec.epoch`, after the interrupted `legs` of that
    epoch (none for a fresh epoch; see the module doc). Raises ValueError when what the legs left
    cannot be shared evenly by `spec`'s world size and batch size with drop_last."""
    shards, samples, _ = _after_legs(counts, spec, shuffle_buffer, legs)
    span, sizes = _rank_span(len(shards), spec, 0 if legs else shuffle_buffer)
    return RankOrder(shards[span], samples[span], sizes)


def delivered_samples(counts: Sequence[int], spec: EpochSpec, shuffle_buffer: int,
                      legs: Sequence[Leg]) -> int:
    """How many samples of epoch `spec.epoch` the `legs` delivered, over all ranks."""
    return _after_legs(counts, spec, shuffle_buffer, legs)[2]
