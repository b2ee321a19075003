"""Consortium-wide terminal features: every bank sees a terminal's traffic over all banks' cards.

A compromised terminal is hit through cards of many banks; each bank alone sees only its cards'
share of that terminal's transactions and frauds. Here every bank obtains the terminal windows
of the handbook (count and fraud share over ``(t - delay - w, t - delay]``) computed over *all*
banks' transactions, while each bank's own events stay encrypted.

The protocol, as secure sums (:mod:`.rounds`):

1. **Sizes.** Each bank sends how many distinct keys it will put in each table; the sum sizes
   the day tables (:func:`.iblt.cells_for`). For the presence table, where banks' keys mostly
   coincide, a summed occupancy bitmap estimates the distinct terminals (linear counting).
2. **Presence.** Each bank adds one key per terminal it saw in the run's days, so the decoded
   table gives, per terminal, the number of banks that saw it. Terminals seen by fewer than
   ``threshold`` banks are dropped by every bank's node before any feature is computed: their
   sums would let a bank subtract its own counts and learn one other bank's.
3. **Events, day by day.** Each bank adds one key per transaction of the day with its fraud
   label (labels are only used once ``delay`` days old): ``(terminal tag, second of the day,
   fraud)``. The decoded table is the consortium's multiset of events of that day, with neither
   card, amount nor bank. From these the windows are exact to the second, as on pooled data.

Terminals are identified by a keyed hash (HMAC-SHA256, 48 bits) under a key the banks share and
the aggregator never holds, and every table position is keyed too; the aggregator only ever
sees ciphertexts of whole tables. Tables are split into chunks of at most ``chunk_values``
values, one secure sum each, so payloads stay bounded however many terminals there are. Every
bank's tables are sized for the consortium's events of the day (equal sizes hide each bank's
volume), so the cost follows the traffic, not the number of terminals.

Noise for differential privacy goes in before encryption: ``noise`` may add or remove events of
a bank's day (e.g. randomized response on the fraud flag, dummy events) before they are encoded.
Exact event keys and noise do not mix, so the private variant
(:func:`private_consortium_history`) reveals less instead: after the same presence table, each
bank sends per day a dense vector of its transactions and frauds per terminal above the
threshold, with Gaussian noise calibrated to (epsilon, delta) per day's release. The windows are
then taken over whole days; the time of day and single events never leave a bank.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Callable, Collection, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Final

import numpy as np
import numpy.typing as npt
import pandas as pd

from bank_node.features import (
    LABEL,
    NS_PER_DAY,
    TERMINAL_ID,
    TIMESTAMP,
    FeatureConfig,
    TerminalWindows,
    timestamps_ns,
)
from bank_node.federated.iblt import (
    DecodedTable,
    TableDecodeError,
    TableLayout,
    cells_for,
    decode,
    encode,
    join_limbs,
    split_limbs,
)
from bank_node.federated.rounds import Algorithm, SumRequest
from schemas.privacy import DEFAULT_DELTA, noise_multiplier

IntArray = npt.NDArray[np.int64]

TAG_BITS: Final = 48
LIMB_BITS: Final = 12
TAG_LIMBS: Final = TAG_BITS // LIMB_BITS
#: ``second_of_day * 2 + fraud`` < 2**18: two limbs.
EVENT_VALUE_LIMBS: Final = 2
CHECK_LIMBS: Final = 2
NS_PER_SECOND: Final = 10**9
SECONDS_PER_DAY: Final = NS_PER_DAY // NS_PER_SECOND
ROUND_PREFIX: Final = "terminals"


@dataclass(frozen=True)
class TerminalStatsConfig:
    """Settings every bank of a run must share.

    Attributes
    ----------
    threshold
        Fewest banks that must have seen a terminal for it to get consortium values.
    load
        Table cells per distinct key (peeling needs more than about 1.22).
    max_attempts
        Table sizes tried (each 1.5 times the last) before a day is given up.
    chunk_values
        Most values per secure sum.
    """

    threshold: int = 3
    load: float = 1.3
    max_attempts: int = 4
    chunk_values: int = 1 << 20

    def __post_init__(self) -> None:
        if self.threshold < 1:
            raise ValueError(f"threshold must be at least 1 bank, got {self.threshold}")
        if self.load <= 1.0:
            raise ValueError(f"load must exceed 1 cell per key, got {self.load}")
        if self.max_attempts < 1 or self.chunk_values < 1:
            raise ValueError("max_attempts and chunk_values must be positive")


def terminal_tags(terminal_ids: npt.ArrayLike, key: bytes) -> IntArray:
    """The 48-bit keyed tag of each terminal id (HMAC-SHA256 under the banks' shared key)."""
    if len(key) < 16:
        raise ValueError("the terminal key must hold at least 16 bytes")
    ids = np.asarray(terminal_ids, dtype=np.int64)
    distinct, inverse = np.unique(ids, return_inverse=True)
    tags = np.fromiter(
        (
            int.from_bytes(hmac.new(key, int(t).to_bytes(8, "little", signed=True), hashlib.sha256).digest()[:6], "little")
            for t in distinct
        ),
        dtype=np.int64,
        count=len(distinct),
    )
    return tags[inverse.reshape(-1)]


@dataclass(frozen=True)
class DayEvents:
    """One bank's transactions of one day, as the consortium tables see them."""

    tag: IntArray
    second: IntArray
    fraud: IntArray

    def __len__(self) -> int:
        return len(self.tag)

    def keys(self) -> tuple[IntArray, IntArray]:
        """Distinct ``(tag, second, fraud)`` keys as limbs, and how often each occurs."""
        value = self.second * 2 + self.fraud
        stacked = np.stack([self.tag, value], axis=1)
        distinct, counts = np.unique(stacked, axis=0, return_counts=True)
        limbs = np.concatenate(
            [
                split_limbs(distinct[:, 0], n_limbs=TAG_LIMBS, limb_bits=LIMB_BITS),
                split_limbs(distinct[:, 1], n_limbs=EVENT_VALUE_LIMBS, limb_bits=LIMB_BITS),
            ],
            axis=1,
        )
        return limbs, counts.astype(np.int64)


#: A bank's privacy noise: its events of a day in, the events to encode out.
EventNoise = Callable[[int, DayEvents], DayEvents]


def events_by_day(transactions: pd.DataFrame, key: bytes, days: Sequence[int]) -> dict[int, DayEvents]:
    """A bank's labelled transactions, keyed and split by day (days since 1970-01-01).

    Times are kept to the second (anything finer is dropped).
    """
    seconds = timestamps_ns(transactions[TIMESTAMP]) // NS_PER_SECOND
    day = seconds // SECONDS_PER_DAY
    wanted = np.isin(day, np.asarray(days, dtype=np.int64))
    tag = terminal_tags(transactions[TERMINAL_ID].to_numpy()[wanted], key)
    second = (seconds % SECONDS_PER_DAY)[wanted]
    fraud = transactions[LABEL].to_numpy(dtype=np.int64)[wanted]
    day = day[wanted]
    out = {}
    for d in days:
        rows = day == d
        out[int(d)] = DayEvents(tag=tag[rows], second=second[rows], fraud=fraud[rows])
    return out


@dataclass(frozen=True)
class ConsortiumHistory:
    """The consortium's terminal events that passed the threshold, as every bank decoded them.

    Attributes
    ----------
    tag, time_ns, count, frauds
        One row per distinct event: terminal tag, time (to the second), how many transactions
        of the consortium had it, and how many of those were fraud.
    presence_tags, presence_banks
        Every terminal of the presence table (sorted tags) and how many banks saw it over the
        run's days, threshold or not.
    days
        The days whose events the history holds.
    threshold
        The threshold applied.
    """

    tag: IntArray
    time_ns: IntArray
    count: IntArray
    frauds: IntArray
    presence_tags: IntArray
    presence_banks: IntArray
    days: tuple[int, ...]
    threshold: int

    def banks_seen(self, tags: npt.ArrayLike) -> IntArray:
        """How many banks saw each terminal (0 for a terminal no bank reported)."""
        tags = np.asarray(tags, dtype=np.int64)
        where = np.searchsorted(self.presence_tags, tags)
        found = where < len(self.presence_tags)
        found[found] = self.presence_tags[where[found]] == tags[found]
        banks = np.zeros(len(tags), dtype=np.int64)
        banks[found] = self.presence_banks[where[found]]
        return banks

    def eligible(self, tags: npt.ArrayLike) -> npt.NDArray[np.bool_]:
        """Whether each terminal gets consortium values (seen by at least ``threshold`` banks)."""
        return self.banks_seen(tags) >= self.threshold

    @functools.cached_property
    def windows(self) -> TerminalWindows:
        """The events sorted once for terminal windows (kept: a scoring service asks at every request)."""
        return TerminalWindows(self.tag, self.time_ns, self.frauds, self.count)


def _table_seed(key: bytes, label: str) -> bytes:
    return hmac.new(key, f"fedfraud/terminal-table/{label}".encode(), hashlib.sha256).digest()


def table_layout(
    label: str, pooled_keys: int, *, key_limbs: int, secret: bytes, config: TerminalStatsConfig, attempt: int = 0
) -> TableLayout:
    """The layout every bank uses for table ``label`` holding ``pooled_keys`` keys at most."""
    return TableLayout(
        n_cells=cells_for(pooled_keys, load=config.load, attempt=attempt),
        key_limbs=key_limbs,
        limb_bits=LIMB_BITS,
        check_limbs=CHECK_LIMBS,
        seed=_table_seed(secret, f"{label}/{attempt}"),
    )


def _table_rounds(
    label: str,
    keys: IntArray,
    multiplicity: IntArray,
    *,
    pooled_keys: int,
    key_limbs: int,
    secret: bytes,
    config: TerminalStatsConfig,
) -> Generator[SumRequest, npt.NDArray[np.float64], DecodedTable]:
    """Sum one table over the banks in chunks and decode it, growing it until it decodes.

    Every bank decodes the same sum, so every bank fails, and retries, in step.
    """
    failure = ""
    for attempt in range(config.max_attempts):
        layout = table_layout(label, pooled_keys, key_limbs=key_limbs, secret=secret, config=config, attempt=attempt)
        vector = encode(layout, keys, multiplicity)
        parts = []
        for chunk, start in enumerate(range(0, layout.n_values, config.chunk_values)):
            request = SumRequest(f"{ROUND_PREFIX}/{label}/a{attempt}/c{chunk}", vector[start : start + config.chunk_values])
            parts.append((yield request))
        try:
            return decode(layout, np.concatenate(parts))
        except TableDecodeError as exc:
            failure = str(exc)
    raise TableDecodeError(f"table {label!r} did not decode after {config.max_attempts} sizes: {failure}")


def sketch_slots(pooled_keys: int) -> int:
    """Bitmap slots for estimating the distinct keys among ``pooled_keys``: a power of two,
    at least an eighth of them, so the estimate stays within a fraction of a percent."""
    return 1 << max(10, (max(pooled_keys, 1) // 8).bit_length())


def presence_bitmap(tags: IntArray, slots: int) -> npt.NDArray[np.float64]:
    """One bank's occupancy bitmap: 1 in the slot of each of its terminal tags (already keyed)."""
    bitmap = np.zeros(slots, dtype=np.float64)
    bitmap[np.asarray(tags, dtype=np.int64) % slots] = 1.0
    return bitmap


def estimate_distinct(occupancy: npt.ArrayLike, *, margin: float = 1.05) -> int:
    """Distinct keys behind a summed occupancy bitmap (linear counting), with a safety margin.

    A key set of ``n`` distinct tags leaves a slot empty with probability ``exp(-n / m)``, so
    ``n = -m ln(empty / m)``. An underestimate only costs a retry with a larger table.
    """
    counts = np.rint(np.asarray(occupancy, dtype=np.float64))
    slots = len(counts)
    empty = int(np.count_nonzero(counts == 0))
    if empty == 0:
        return slots * 64
    return int(np.ceil(-slots * np.log(empty / slots) * margin)) + 16


def day_label(day: int) -> str:
    """The round label of a day: its ISO date."""
    return (np.datetime64(0, "D") + np.timedelta64(int(day), "D")).astype(str)


def _pooled_days(events: Mapping[int, DayEvents],
                 pool_days: Collection[int] | None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    days = tuple(sorted(events))
    pooled_days = days if pool_days is None else tuple(sorted(set(pool_days)))
    if not set(pooled_days) <= set(days):
        raise ValueError("pool_days must be days of events")
    return days, pooled_days


def _presence(events: Mapping[int, DayEvents]) -> IntArray:
    """The distinct terminals of a bank's events over all their days."""
    if not events:
        return np.empty(0, np.int64)
    return np.unique(np.concatenate([e.tag for e in events.values()]))


def _presence_rounds(
    presence: IntArray, day_sizes: Sequence[int], *, secret: bytes, config: TerminalStatsConfig
) -> Generator[SumRequest, npt.NDArray[np.float64], tuple[IntArray, IntArray, IntArray]]:
    """Sum the banks' sizes and their presence tables: every terminal (sorted tags), how many
    banks saw it, and the summed ``day_sizes``."""
    own_sizes = np.array([len(presence), *day_sizes], dtype=np.float64)
    pooled = np.rint((yield SumRequest(f"{ROUND_PREFIX}/sizes", own_sizes))).astype(np.int64)
    # Banks share most terminals, so the presence table is sized for the distinct terminals,
    # estimated from a summed occupancy bitmap, rather than for the sum of the banks' counts.
    sketch = presence_bitmap(presence, sketch_slots(int(pooled[0])))
    occupancy = yield SumRequest(f"{ROUND_PREFIX}/presence-sketch", sketch)
    distinct = min(int(pooled[0]), estimate_distinct(occupancy))
    seen = yield from _table_rounds(
        "presence",
        split_limbs(presence, n_limbs=TAG_LIMBS, limb_bits=LIMB_BITS),
        np.ones(len(presence), dtype=np.int64),
        pooled_keys=distinct,
        key_limbs=TAG_LIMBS,
        secret=secret,
        config=config,
    )
    tags = join_limbs(seen.keys, limb_bits=LIMB_BITS)
    order = np.argsort(tags)
    return tags[order], seen.multiplicity[order], pooled[1:]


def consortium_history(
    events: Mapping[int, DayEvents],
    *,
    secret: bytes,
    config: TerminalStatsConfig = TerminalStatsConfig(),
    noise: EventNoise | None = None,
    pool_days: Collection[int] | None = None,
    keep_below_threshold: bool = False,
) -> Algorithm[ConsortiumHistory]:
    """One bank's side of the protocol: its events in, the consortium's (above threshold) out.

    Parameters
    ----------
    events
        This bank's events per day; every bank must pass the same days.
    secret
        The terminal key the banks share (the aggregator never holds it).
    config
        Shared settings.
    noise
        Optional privacy noise, applied to each day's events before they are encoded.
    pool_days
        The days whose events are summed (default: all of ``events``); presence is always
        counted over every day of ``events``. Every bank must pass the same days.
    keep_below_threshold
        Keep the decoded events of terminals below the threshold too (a node that keeps the
        history night after night needs them when a terminal reaches the threshold later; the
        threshold is then applied when features are computed).
    """
    days, pooled_days = _pooled_days(events, pool_days)
    if noise is not None:
        events = {d: noise(d, events[d]) for d in days}
    day_keys = {d: events[d].keys() for d in pooled_days}
    presence_tags, presence_banks, pooled = yield from _presence_rounds(
        _presence(events), [len(day_keys[d][0]) for d in pooled_days], secret=secret, config=config)
    kept = presence_tags if keep_below_threshold else presence_tags[presence_banks >= config.threshold]

    tags, times, counts, frauds = [], [], [], []
    for d, n_pooled in zip(pooled_days, pooled):
        limbs, multiplicity = day_keys[d]
        table = yield from _table_rounds(
            day_label(d),
            limbs,
            multiplicity,
            pooled_keys=int(n_pooled),
            key_limbs=TAG_LIMBS + EVENT_VALUE_LIMBS,
            secret=secret,
            config=config,
        )
        tag = join_limbs(table.keys[:, :TAG_LIMBS], limb_bits=LIMB_BITS)
        value = join_limbs(table.keys[:, TAG_LIMBS:], limb_bits=LIMB_BITS)
        keep = np.isin(tag, kept)
        tags.append(tag[keep])
        times.append(d * NS_PER_DAY + (value[keep] >> 1) * NS_PER_SECOND)
        counts.append(table.multiplicity[keep])
        frauds.append(table.multiplicity[keep] * (value[keep] & 1))
    return _history(tags, times, counts, frauds, presence_tags, presence_banks, pooled_days, config.threshold)


def _history(tags: list[IntArray], times: list[IntArray], counts: list[IntArray], frauds: list[IntArray],
             presence_tags: IntArray, presence_banks: IntArray, days: tuple[int, ...],
             threshold: int) -> ConsortiumHistory:
    """A history of the rows decoded day by day."""
    empty = np.empty(0, dtype=np.int64)
    return ConsortiumHistory(
        tag=np.concatenate(tags) if tags else empty,
        time_ns=np.concatenate(times) if times else empty,
        count=np.concatenate(counts) if counts else empty,
        frauds=np.concatenate(frauds) if frauds else empty,
        presence_tags=presence_tags,
        presence_banks=presence_banks,
        days=days,
        threshold=threshold,
    )


@dataclass(frozen=True)
class DayCountPrivacy:
    """The private variant's setting: each day's release is (epsilon, delta)-DP for one transaction.

    A transaction adds 1 to its terminal's count of its day and at most 1 to that day's frauds:
    L2 sensitivity ``sqrt(2)``. A day is released once (a node keeps it), so a transaction spends
    one release's epsilon in the terminal statistics, whatever the number of nights its windows
    are used in (reading a released day again is post-processing).
    """

    epsilon: float
    delta: float = DEFAULT_DELTA

    SENSITIVITY: ClassVar[float] = float(np.sqrt(2.0))

    def __post_init__(self) -> None:
        if not np.isfinite(self.epsilon) or self.epsilon <= 0:
            raise ValueError(f"the terminal statistics' epsilon must be a positive number, got {self.epsilon}")
        if not 0 < self.delta < 1:
            raise ValueError(f"the terminal statistics' delta must lie strictly between 0 and 1, got {self.delta}")

    @functools.cached_property
    def multiplier(self) -> float:
        """Noise standard deviation over sensitivity for one release."""
        return noise_multiplier(self.epsilon, self.delta, 1)

    @property
    def sigma(self) -> float:
        """Standard deviation of the noise one bank adds to each count."""
        return self.multiplier * self.SENSITIVITY


def day_counts(events: DayEvents, terminals: IntArray) -> npt.NDArray[np.float64]:
    """A bank's transactions and frauds of one day per terminal of ``terminals`` (sorted tags),
    as an ``(n, 2)`` array; events of other terminals are left out."""
    out = np.zeros((len(terminals), 2), dtype=np.float64)
    where = np.searchsorted(terminals, events.tag)
    found = where < len(terminals)
    found[found] = terminals[where[found]] == events.tag[found]
    np.add.at(out[:, 0], where[found], 1.0)
    np.add.at(out[:, 1], where[found], events.fraud[found].astype(np.float64))
    return out


def private_consortium_history(
    events: Mapping[int, DayEvents],
    *,
    secret: bytes,
    privacy: DayCountPrivacy,
    config: TerminalStatsConfig = TerminalStatsConfig(),
    pool_days: Collection[int] | None = None,
    keep_below_threshold: bool = False,
    rng: np.random.Generator | None = None,
) -> Algorithm[ConsortiumHistory]:
    """One bank's side of the private variant: noisy day counts per terminal instead of events.

    Presence is summed as in :func:`consortium_history` (it is not covered by the noise: it tells
    how many banks saw each terminal over the whole period). Then, for each pooled day, every
    bank sends its transactions and frauds per terminal above the threshold (one dense vector in
    the order of the decoded presence table, which every bank holds alike) with Gaussian noise of
    :attr:`DayCountPrivacy.sigma` on every value. Neither the time of day nor single events are
    revealed: the sum is the consortium's day counts, noisy.

    A bank then takes its own noise back out of the sum (it knows it; post-processing), so its
    history is its own exact counts plus the other banks' noisy ones. The history rows are the
    nonzero (rounded) cells, dated at the day's last second (histories are kept to the second):
    the windows ``(t - delay - w, t - delay]`` of a transaction of day ``D`` then hold the whole
    days ``D - delay - w`` to ``D - delay - 1``, each of them at least ``delay`` days old (for a
    transaction in the day's very last second, the days one later).

    With ``keep_below_threshold`` (a node keeping the history night after night), every terminal
    of the presence table is counted: a terminal that reaches the threshold later then has its
    earlier days. The noise protects each transaction whatever the number of banks at a terminal;
    the threshold is applied when features are computed.
    """
    days, pooled_days = _pooled_days(events, pool_days)
    rng = np.random.default_rng() if rng is None else rng
    presence_tags, presence_banks, _ = yield from _presence_rounds(_presence(events), [], secret=secret, config=config)
    terminals = presence_tags if keep_below_threshold else presence_tags[presence_banks >= config.threshold]
    tags, times, counts, frauds = [], [], [], []
    for d in pooled_days if len(terminals) else ():
        noise = rng.normal(0.0, privacy.sigma, size=(len(terminals), 2))
        vector = (day_counts(events[d], terminals) + noise).ravel()
        parts = []
        for chunk, start in enumerate(range(0, len(vector), config.chunk_values)):
            request = SumRequest(f"{ROUND_PREFIX}/counts/{day_label(d)}/c{chunk}",
                                 vector[start : start + config.chunk_values])
            parts.append((yield request))
        cells = np.rint(np.concatenate(parts).reshape(-1, 2) - noise).astype(np.int64)
        keep = (cells != 0).any(axis=1)
        tags.append(terminals[keep])
        times.append(np.full(int(keep.sum()), d * NS_PER_DAY + (SECONDS_PER_DAY - 1) * NS_PER_SECOND, dtype=np.int64))
        counts.append(cells[keep, 0])
        frauds.append(cells[keep, 1])
    return _history(tags, times, counts, frauds, presence_tags, presence_banks, pooled_days, config.threshold)


@dataclass(frozen=True)
class NightlyPooling:
    """What one night's pooling gave a bank.

    Attributes
    ----------
    history
        The consortium's events of the days pooled tonight (every terminal, the threshold is
        applied when features are computed) and the presence over all the run's days.
    contributors
        Indices, into the run's sorted participants, of the banks whose events are in the sums.
    """

    history: ConsortiumHistory
    contributors: frozenset[int]


def nightly_pooling(
    events: Mapping[int, DayEvents],
    *,
    stale: Collection[int],
    party_index: int,
    n_participants: int,
    secret: bytes,
    config: TerminalStatsConfig = TerminalStatsConfig(),
    noise: EventNoise | None = None,
    privacy: DayCountPrivacy | None = None,
) -> Algorithm[NightlyPooling]:
    """One bank's side of a night's terminal statistics: only the days some bank lacks are pooled.

    A first sum agrees on the plan: each bank adds a one-hot vector of its place among the run's
    participants (so every bank learns whose events the sums hold) and a 0/1 flag per day of
    ``events`` that it has not pooled yet, or pooled with other banks than tonight's
    (``stale``). The days flagged by any bank are pooled again by all; presence is counted over
    every day, so the threshold reflects the whole period the run's features reach.

    Parameters
    ----------
    events
        This bank's events per day of the period; every bank passes the same days.
    stale
        The days of ``events`` this bank needs pooled.
    party_index, n_participants
        This bank's place among the run's sorted participants, and how many there are.
    privacy
        Pool noisy day counts (:func:`private_consortium_history`) instead of exact events.
    """
    if not 0 <= party_index < n_participants:
        raise ValueError(f"party index {party_index} is not a place among {n_participants} participants")
    days = sorted(events)
    plan = np.zeros(n_participants + len(days), dtype=np.float64)
    plan[party_index] = 1.0
    plan[n_participants:] = [1.0 if d in stale else 0.0 for d in days]
    summed = np.rint((yield SumRequest(f"{ROUND_PREFIX}/plan", plan))).astype(np.int64)
    contributors = frozenset(int(i) for i in np.flatnonzero(summed[:n_participants] > 0))
    pool = [d for d, flagged in zip(days, summed[n_participants:]) if flagged > 0]
    if privacy is None:
        history = yield from consortium_history(events, secret=secret, config=config, noise=noise, pool_days=pool,
                                                keep_below_threshold=True)
    else:
        history = yield from private_consortium_history(events, secret=secret, privacy=privacy, config=config,
                                                        pool_days=pool, keep_below_threshold=True)
    return NightlyPooling(history=history, contributors=contributors)


def history_days(first_described: str | pd.Timestamp, last_described: str | pd.Timestamp,
                 config: FeatureConfig = FeatureConfig()) -> list[int]:
    """The days whose events the terminal windows of ``[first, last]`` (inclusive days) reach."""
    first = int(pd.Timestamp(first_described).normalize().value // NS_PER_DAY)
    last = int(pd.Timestamp(last_described).normalize().value // NS_PER_DAY)
    if first > last:
        raise ValueError(f"first day {first_described} is after last day {last_described}")
    return list(range(first - config.lookback_days, last - config.delay_days + 1))


def with_consortium_terminal_features(
    featured: pd.DataFrame,
    history: ConsortiumHistory,
    *,
    secret: bytes,
    config: FeatureConfig = FeatureConfig(),
) -> tuple[pd.DataFrame, npt.NDArray[np.bool_]]:
    """Replace the terminal features of eligible terminals by their consortium-wide values.

    Parameters
    ----------
    featured
        Rows with the handbook's features (as from :func:`bank_node.features.compute_features`).
    history
        The decoded consortium events.

    Returns
    -------
    frame, covered
        A copy with the ``TERMINAL_ID_*`` columns replaced on covered rows, and which rows are
        covered (their terminal passed the threshold). Other rows keep the bank's own values.
    """
    values, covered = consortium_terminal_values(featured[TERMINAL_ID].to_numpy(), timestamps_ns(featured[TIMESTAMP]),
                                                 history, secret=secret, config=config)
    out = featured.copy()
    for name, column in values.items():
        out.loc[covered, name] = column
    return out, covered


def consortium_terminal_values(
    terminal_ids: npt.ArrayLike,
    time_ns: IntArray,
    history: ConsortiumHistory,
    *,
    secret: bytes,
    config: FeatureConfig = FeatureConfig(),
    tags: IntArray | None = None,
) -> tuple[dict[str, npt.NDArray[np.float64]], npt.NDArray[np.bool_]]:
    """The consortium-wide terminal features of the rows whose terminal passed the threshold
    (``tags``: the terminals' :func:`terminal_tags` under ``secret``, when known already).

    Returns
    -------
    values, covered
        ``TERMINAL_ID_*`` columns for the covered rows only, and which rows are covered.

    Raises
    ------
    ValueError
        The history lacks days the rows' windows reach.
    """
    days = set(history.days)
    described = np.asarray(time_ns, dtype=np.int64) // NS_PER_DAY
    needed = {int(d) - k for d in np.unique(described) for k in range(config.delay_days, config.lookback_days + 1)}
    if not needed <= days:
        missing = sorted(needed - days)
        raise ValueError(
            f"the consortium history lacks {len(missing)} day(s) these rows' windows reach, "
            f"from {day_label(missing[0])} to {day_label(missing[-1])}"
        )
    if tags is None:
        tags = terminal_tags(terminal_ids, secret)
    covered = history.eligible(tags)
    if not covered.any():
        return {}, covered
    return history.windows.features(tags[covered], np.asarray(time_ns, dtype=np.int64)[covered], config=config), covered


__all__ = [
    "ConsortiumHistory",
    "DayCountPrivacy",
    "DayEvents",
    "NightlyPooling",
    "EventNoise",
    "TerminalStatsConfig",
    "consortium_history",
    "consortium_terminal_values",
    "day_counts",
    "day_label",
    "estimate_distinct",
    "events_by_day",
    "history_days",
    "nightly_pooling",
    "presence_bitmap",
    "private_consortium_history",
    "sketch_slots",
    "table_layout",
    "terminal_tags",
    "with_consortium_terminal_features",
]
