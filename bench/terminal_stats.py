"""Cost of consortium terminal statistics per bank per day, for 10,000 and 1,000,000 terminals.

Each day every bank encodes its events of the day (terminal tag, second, fraud) into the
invertible table of :mod:`bank_node.federated.terminal_stats`, encrypts it in chunks, the
aggregator sums the chunks, and every bank decrypts and decodes the sum. The presence table
(which terminals each bank saw over the windows' 37 days, for the banks-per-terminal threshold)
is measured separately: it only changes as terminals come and go, so it need not be sent daily.

Scenarios (synthetic events; terminals drawn uniformly, times uniformly over the day, 0.8%
fraud, banks holding 0.36/0.25/0.18/0.12/0.09 of the traffic as in the simulator):

- ``10k``: 10,000 terminals, 9,700 transactions a day (the handbook's traffic);
- ``1m-sparse``: 1,000,000 terminals, the same 9,700 transactions a day: the cost follows the
  traffic, not the number of terminals;
- ``1m``: 1,000,000 terminals at the handbook's density, 970,000 transactions a day.

Every decoded table is checked against the union of the banks' events. Also reported: how
often two terminals share a 48-bit tag (the only way two terminals can be confused), observed
over the scenario's terminal ids and expected (``n^2 / 2^49``), and what the same day would
cost as a dense per-terminal count vector (2 values a terminal, approximate windows).

Usage::

    python bench/terminal_stats.py [--scenarios 10k,1m-sparse,1m] [--scheme ckks] [--banks 5]
                                   [--json OUT] [--png OUT]
"""

from __future__ import annotations

import argparse
import json
import platform
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

import crypto
from bank_node.federated.iblt import decode, encode, join_limbs, split_limbs
from bank_node.federated.terminal_stats import (
    EVENT_VALUE_LIMBS,
    LIMB_BITS,
    TAG_BITS,
    TAG_LIMBS,
    DayEvents,
    TerminalStatsConfig,
    estimate_distinct,
    presence_bitmap,
    sketch_slots,
    table_layout,
    terminal_tags,
)
from crypto.scheme import HEScheme
from fedfraud.simulation import SimulationConfig

SCENARIOS = {"10k": (10_000, 9_700), "1m-sparse": (1_000_000, 9_700), "1m": (1_000_000, 970_000)}
PRESENCE_DAYS = 37
FRAUD_RATE = 0.008


@dataclass
class TableCost:
    """One table's cost for the busiest bank, and the aggregator's."""

    keys: int
    cells: int
    values: int
    encode_s: float
    encrypt_s: float
    aggregate_s: float
    decrypt_s: float
    decode_s: float
    upload_bytes: int
    download_bytes: int

    @property
    def bank_s(self) -> float:
        """The busiest bank's seconds: encode, encrypt, decrypt and decode."""
        return self.encode_s + self.encrypt_s + self.decrypt_s + self.decode_s


def secure_table(
    label: str,
    bank_keys: list[tuple[np.ndarray, np.ndarray]],
    *,
    key_limbs: int,
    secret_key: bytes,
    scheme: HEScheme,
    public: HEScheme,
    config: TerminalStatsConfig,
    pooled: int | None = None,
) -> tuple[TableCost, np.ndarray, np.ndarray]:
    """Encode, encrypt, sum, decrypt and decode one table; the decoded keys and multiplicities."""
    pooled = sum(len(keys) for keys, _ in bank_keys) if pooled is None else pooled
    layout = table_layout(label, pooled, key_limbs=key_limbs, secret=secret_key, config=config)
    encode_s, vectors = [], []
    for keys, counts in bank_keys:
        t0 = time.perf_counter()
        vectors.append(encode(layout, keys, counts))
        encode_s.append(time.perf_counter() - t0)
    encrypt_s = [0.0] * len(bank_keys)
    decrypt_s = [0.0] * len(bank_keys)
    uploaded = [0] * len(bank_keys)
    aggregate_s = 0.0
    downloaded = 0
    parts = []
    for start in range(0, layout.n_values, config.chunk_values):
        payloads = []
        for b, vector in enumerate(vectors):
            t0 = time.perf_counter()
            payloads.append(scheme.encrypt(vector[start : start + config.chunk_values]))
            encrypt_s[b] += time.perf_counter() - t0
            uploaded[b] += len(payloads[-1])
        t0 = time.perf_counter()
        summed = public.aggregate(payloads)
        aggregate_s += time.perf_counter() - t0
        downloaded += len(summed)
        del payloads
        for b in range(len(vectors)):
            t0 = time.perf_counter()
            part = scheme.decrypt(summed)
            decrypt_s[b] += time.perf_counter() - t0
        parts.append(part)
    t0 = time.perf_counter()
    table = decode(layout, np.concatenate(parts))
    decode_s = time.perf_counter() - t0
    busiest = int(np.argmax(uploaded))
    cost = TableCost(
        keys=pooled,
        cells=layout.n_cells,
        values=layout.n_values,
        encode_s=max(encode_s),
        encrypt_s=max(encrypt_s),
        aggregate_s=aggregate_s,
        decrypt_s=max(decrypt_s),
        decode_s=decode_s,
        upload_bytes=uploaded[busiest],
        download_bytes=downloaded,
    )
    return cost, table.keys, table.multiplicity


def run_scenario(name: str, *, scheme_name: str, n_banks: int, seed: int, console: Console) -> dict[str, object]:
    n_terminals, per_day = SCENARIOS[name]
    rng = np.random.default_rng(seed)
    shares = np.array(SimulationConfig(n_banks=n_banks).shares)
    secret_key = secrets.token_bytes(32)
    config = TerminalStatsConfig()
    scheme = crypto.generate(scheme_name)
    public = crypto.load_context(scheme.public_context(), require_public=True)

    t0 = time.perf_counter()
    tags = terminal_tags(np.arange(n_terminals), secret_key)
    tag_s = time.perf_counter() - t0
    collisions = n_terminals - len(np.unique(tags))

    bank = rng.choice(n_banks, size=per_day, p=shares)
    terminal = rng.integers(0, n_terminals, size=per_day)
    events = [
        DayEvents(
            tag=tags[terminal[bank == b]],
            second=rng.integers(0, 86_400, size=int((bank == b).sum())),
            fraud=(rng.random(int((bank == b).sum())) < FRAUD_RATE).astype(np.int64),
        )
        for b in range(n_banks)
    ]
    prepare_s = []
    day_keys = []
    for e in events:
        t0 = time.perf_counter()
        day_keys.append(e.keys())
        prepare_s.append(time.perf_counter() - t0)
    console.print(f"{name}: day table, {per_day:,} events of {n_terminals:,} terminals")
    day, keys, counts = secure_table(
        "bench-day", day_keys, key_limbs=TAG_LIMBS + EVENT_VALUE_LIMBS, secret_key=secret_key,
        scheme=scheme, public=public, config=config,
    )
    union = np.unique(
        np.concatenate([np.stack([e.tag, e.second * 2 + e.fraud], axis=1) for e in events]), axis=0, return_counts=True
    )
    decoded = np.stack(
        [join_limbs(keys[:, :TAG_LIMBS], limb_bits=LIMB_BITS), join_limbs(keys[:, TAG_LIMBS:], limb_bits=LIMB_BITS)],
        axis=1,
    )
    order = np.lexsort(decoded.T[::-1])
    exact = bool(np.array_equal(decoded[order], union[0]) and np.array_equal(counts[order], union[1]))

    # Presence: each bank's distinct terminals over the windows' days at the same traffic.
    presence_keys = []
    for b in range(n_banks):
        expected = per_day * shares[b] * PRESENCE_DAYS
        seen = np.unique(rng.integers(0, n_terminals, size=int(expected)))
        limbs = split_limbs(tags[seen], n_limbs=TAG_LIMBS, limb_bits=LIMB_BITS)
        presence_keys.append((limbs, np.ones(len(seen), dtype=np.int64)))
    console.print(f"{name}: presence table over {PRESENCE_DAYS} days")
    # The occupancy bitmap that sizes the presence table for the distinct terminals.
    sum_of_distinct = sum(len(k) for k, _ in presence_keys)
    slots = sketch_slots(sum_of_distinct)
    sketch_up = 0
    sketch_s = [0.0] * n_banks
    payloads = []
    for b, (limbs, _) in enumerate(presence_keys):
        t0 = time.perf_counter()
        payloads.append(scheme.encrypt(presence_bitmap(join_limbs(limbs, limb_bits=LIMB_BITS), slots)))
        sketch_s[b] += time.perf_counter() - t0
        sketch_up = max(sketch_up, len(payloads[-1]))
    summed = public.aggregate(payloads)
    t0 = time.perf_counter()
    distinct = min(sum_of_distinct, estimate_distinct(scheme.decrypt(summed)))
    sketch_s = [v + time.perf_counter() - t0 for v in sketch_s]
    presence, _, _ = secure_table(
        "bench-presence", presence_keys, key_limbs=TAG_LIMBS, secret_key=secret_key,
        scheme=scheme, public=public, config=config, pooled=distinct,
    )
    presence.upload_bytes += sketch_up
    presence.download_bytes += len(summed)
    presence.encode_s += max(sketch_s)
    true_distinct = len(np.unique(np.concatenate([join_limbs(k, limb_bits=LIMB_BITS) for k, _ in presence_keys])))
    dense_values = 2 * n_terminals
    bytes_per_value = day.upload_bytes / day.values
    return {
        "scenario": name,
        "terminals": n_terminals,
        "events_per_day": per_day,
        "day": asdict(day) | {"bank_s": day.bank_s, "prepare_s": max(prepare_s)},
        "presence": asdict(presence) | {"bank_s": presence.bank_s, "distinct_estimated": distinct,
                                        "distinct_true": true_distinct, "sum_of_banks_distinct": sum_of_distinct},
        "decoded_exactly": exact,
        "tag_seconds_all_terminals": tag_s,
        "tag_collisions_observed": collisions,
        "tag_collisions_expected": n_terminals * (n_terminals - 1) / 2 / 2.0**TAG_BITS,
        "dense_alternative_upload_bytes": dense_values * bytes_per_value,
    }


def plot(results: list[dict[str, object]], path: Path, scheme: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [str(r["scenario"]) for r in results]
    x = np.arange(len(names))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for ax, field, unit, scale in ((left, "bank_s", "seconds", 1.0), (right, "upload_bytes", "MB uploaded", 1e6)):
        day = [r["day"][field] / scale for r in results]  # type: ignore[index]
        presence = [r["presence"][field] / scale for r in results]  # type: ignore[index]
        ax.bar(x - 0.2, day, 0.4, label="day table (daily)")
        ax.bar(x + 0.2, presence, 0.4, label=f"presence table ({PRESENCE_DAYS} days)")
        ax.set_xticks(x, names)
        ax.set_yscale("log")
        ax.set(ylabel=f"{unit}, busiest bank", title=f"per bank: {unit}")
        ax.legend()
    fig.suptitle(f"consortium terminal statistics, {scheme}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenarios", default="10k,1m-sparse,1m")
    parser.add_argument("--scheme", default="ckks", choices=crypto.SCHEMES)
    parser.add_argument("--banks", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--png", type=Path, default=None)
    args = parser.parse_args()
    console = Console(stderr=True)
    names = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; choose from {', '.join(SCENARIOS)}")
    results = [run_scenario(n, scheme_name=args.scheme, n_banks=args.banks, seed=args.seed, console=console)
               for n in names]

    table = Table(title=f"Consortium terminal statistics per bank per day ({args.scheme}, {args.banks} banks, "
                        "busiest bank)")
    for column in ("scenario", "terminals", "events/day", "cells", "encode s", "encrypt s", "decrypt s",
                   "decode s", "bank s", "aggregator s", "MB up", "MB down", "exact",
                   "presence MB up", "presence bank s", "tag collisions (exp.)"):
        table.add_column(column, justify="right")
    for r in results:
        day, presence = r["day"], r["presence"]
        assert isinstance(day, dict) and isinstance(presence, dict)
        table.add_row(
            str(r["scenario"]), f"{r['terminals']:,}", f"{r['events_per_day']:,}", f"{day['cells']:,}",
            f"{day['encode_s'] + day['prepare_s']:.2f}", f"{day['encrypt_s']:.2f}", f"{day['decrypt_s']:.2f}",
            f"{day['decode_s']:.2f}", f"{day['bank_s'] + day['prepare_s']:.2f}", f"{day['aggregate_s']:.2f}",
            f"{day['upload_bytes'] / 1e6:.1f}", f"{day['download_bytes'] / 1e6:.1f}", str(r["decoded_exactly"]),
            f"{presence['upload_bytes'] / 1e6:.1f}", f"{presence['bank_s']:.2f}",
            f"{r['tag_collisions_observed']} ({r['tag_collisions_expected']:.1e})",
        )
    Console(width=220).print(table)
    meta = {"machine": platform.platform(), "python": platform.python_version(), "scheme": args.scheme,
            "banks": args.banks}
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    if args.png is not None:
        args.png.parent.mkdir(parents=True, exist_ok=True)
        plot(results, args.png, args.scheme)


if __name__ == "__main__":
    main()
