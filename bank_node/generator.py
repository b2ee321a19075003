"""Seeded generator of simulated card transactions with injected fraud.

Modelled on the simulator described in chapter 3 of the Fraud Detection Handbook
(Le Borgne et al., 2022); the code is our own and vectorised with numpy.

* Customers (cards) have a home location on a square area, a mean amount (the
  standard deviation is half of it) and a mean number of transactions per day.
* Terminals have a location; a customer uses the terminals within ``radius`` of home,
  each equally likely. Customers with no terminal in reach make no transactions.
* Per customer and day the number of transactions is Poisson; times of day are
  normal around noon (draws outside the day are dropped); amounts are normal, a
  negative draw being replaced by a uniform one between 0 and twice the mean.
* Fraud, applied in this order (a later scenario relabels a transaction):

  1. any amount above 220 is fraud;
  2. each day a few random terminals are compromised: all their transactions from
     that day on, for 28 days, are fraud;
  3. each day a few random customers are compromised: for 14 days from that day on,
     each of their transactions is, with probability 1/3, fraud with its amount
     multiplied by 5.

  The handbook compromises 2 terminals and 3 customers a day for 10,000 terminals
  and 5,000 customers; here the daily numbers are Poisson with those rates per
  terminal and per customer, so the fraud share (~0.8%) does not depend on size.

The output uses the handbook's column names and dtypes (see :data:`COLUMNS`); map
them to the product's canonical names with :data:`HANDBOOK_TO_CANONICAL`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from schemas.transaction import HANDBOOK_COLUMNS

__all__ = [
    "COLUMNS",
    "GeneratorConfig",
    "HANDBOOK_TO_CANONICAL",
    "SimulatedData",
    "generate_transactions",
    "simulate",
]

COLUMNS: tuple[str, ...] = (
    "TRANSACTION_ID",
    "TX_DATETIME",
    "CUSTOMER_ID",
    "TERMINAL_ID",
    "TX_AMOUNT",
    "TX_TIME_SECONDS",
    "TX_TIME_DAYS",
    "TX_FRAUD",
    "TX_FRAUD_SCENARIO",
)
"""Columns of a generated frame, in order; all int64 but ``TX_DATETIME``
(datetime64[ns]) and ``TX_AMOUNT`` (float64)."""

HANDBOOK_TO_CANONICAL: dict[str, str] = {handbook: field for field, handbook in HANDBOOK_COLUMNS.items()}
"""Handbook column names to the product's canonical transaction columns."""

_SECONDS_PER_DAY = 86_400
# Customer-by-terminal distance blocks are cut to about this many cells.
_DISTANCE_BLOCK_CELLS = 4_000_000

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class GeneratorConfig:
    """Constants of the simulation.

    Parameters
    ----------
    area_size : float
        Side of the square on which customers and terminals are placed uniformly.
    mean_amount_range : tuple of float
        Customer mean amounts are uniform on this range.
    std_amount_ratio : float
        Customer amount standard deviation as a share of the mean amount.
    tx_per_day_range : tuple of float
        Customer mean transactions per day are uniform on this range.
    time_of_day_mean_seconds, time_of_day_std_seconds : float
        Normal distribution of the time of day, in seconds after midnight.
    fraud_amount_threshold : float
        Scenario 1: amounts strictly above this are fraud.
    terminal_compromise_rate : float
        Scenario 2: expected compromised terminals per day, per terminal.
    terminal_compromise_days : int
        Scenario 2: days a compromised terminal stays compromised.
    customer_compromise_rate : float
        Scenario 3: expected compromised customers per day, per customer.
    customer_compromise_days : int
        Scenario 3: days a compromised customer stays compromised.
    compromised_customer_fraud_share : float
        Scenario 3: probability that a compromised customer's transaction is fraud.
    compromised_customer_amount_factor : float
        Scenario 3: factor applied to the amount of those frauds.
    """

    area_size: float = 100.0
    mean_amount_range: tuple[float, float] = (5.0, 100.0)
    std_amount_ratio: float = 0.5
    tx_per_day_range: tuple[float, float] = (0.0, 4.0)
    time_of_day_mean_seconds: float = _SECONDS_PER_DAY / 2
    time_of_day_std_seconds: float = 20_000.0
    fraud_amount_threshold: float = 220.0
    terminal_compromise_rate: float = 2 / 10_000
    terminal_compromise_days: int = 28
    customer_compromise_rate: float = 3 / 5_000
    customer_compromise_days: int = 14
    compromised_customer_fraud_share: float = 1 / 3
    compromised_customer_amount_factor: float = 5.0


@dataclass(frozen=True)
class SimulatedData:
    """A simulation's transactions and the ground truth behind them.

    Attributes
    ----------
    transactions : pandas.DataFrame
        The transactions, columns :data:`COLUMNS`.
    customers : pandas.DataFrame
        One row per customer: ``CUSTOMER_ID``, ``x``, ``y``, ``mean_amount``,
        ``std_amount``, ``mean_tx_per_day``, ``n_terminals`` (terminals in reach).
    terminals : pandas.DataFrame
        One row per terminal: ``TERMINAL_ID``, ``x``, ``y``.
    compromised_terminals : pandas.DataFrame
        Scenario 2 events: ``TERMINAL_ID`` and ``start_day`` (day index from
        ``start_date``); the terminal is compromised on days
        ``[start_day, start_day + terminal_compromise_days)``.
    compromised_customers : pandas.DataFrame
        Scenario 3 events: ``CUSTOMER_ID`` and ``start_day``, likewise for
        ``customer_compromise_days``.
    """

    transactions: pd.DataFrame
    customers: pd.DataFrame
    terminals: pd.DataFrame
    compromised_terminals: pd.DataFrame
    compromised_customers: pd.DataFrame


def generate_transactions(
    *,
    n_customers: int,
    n_terminals: int,
    days: int,
    seed: int,
    start_date: str = "2018-04-01",
    radius: float = 5.0,
    config: GeneratorConfig = GeneratorConfig(),
) -> pd.DataFrame:
    """Generate simulated transactions in the handbook's layout.

    Parameters
    ----------
    n_customers, n_terminals : int
        Numbers of customers (cards) and terminals, > 0.
    days : int
        Number of simulated days, > 0.
    seed : int
        Seed of the random generator, >= 0; equal seeds give identical frames.
    start_date : str
        Naive date of day 0.
    radius : float
        Distance within which a customer uses terminals, > 0.
    config : GeneratorConfig
        Simulation constants.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`COLUMNS`, rows sorted by ``TX_DATETIME`` (ties by customer),
        ``TRANSACTION_ID`` = 0..n-1 in that order, ``RangeIndex``.

    Raises
    ------
    ValueError
        If an argument is out of range or ``start_date`` is not a naive date.
    """
    return simulate(
        n_customers=n_customers,
        n_terminals=n_terminals,
        days=days,
        seed=seed,
        start_date=start_date,
        radius=radius,
        config=config,
    ).transactions


def simulate(
    *,
    n_customers: int,
    n_terminals: int,
    days: int,
    seed: int,
    start_date: str = "2018-04-01",
    radius: float = 5.0,
    config: GeneratorConfig = GeneratorConfig(),
) -> SimulatedData:
    """Run the simulation and keep its ground truth.

    Parameters are those of :func:`generate_transactions`.

    Returns
    -------
    SimulatedData
        Transactions, customer and terminal profiles, compromise events.
    """
    _check_count("n_customers", n_customers)
    _check_count("n_terminals", n_terminals)
    _check_count("days", days)
    _check_count("seed", seed, minimum=0)
    if isinstance(radius, bool) or not isinstance(radius, int | float) or not 0 < radius < np.inf:
        raise ValueError(f"radius must be a positive finite number, got {radius!r}")
    day0 = _parse_start_date(start_date)

    rng = np.random.default_rng(seed)
    customers = _customer_profiles(rng, n_customers, config)
    terminal_xy = rng.uniform(0.0, config.area_size, size=(n_terminals, 2))
    reach_start, reach = _terminals_in_reach(customers["xy"], terminal_xy, radius)
    n_in_reach = np.diff(reach_start)

    customer, day, second = _transaction_times(rng, customers["mean_tx_per_day"], n_in_reach, days, config)
    amount = _amounts(rng, customers["mean_amount"][customer], customers["std_amount"][customer])
    pick = np.floor(rng.random(len(customer)) * n_in_reach[customer]).astype(np.int64)
    terminal = reach[reach_start[customer] + pick]

    order = np.lexsort((customer, second, day))
    customer, terminal, day, second = customer[order], terminal[order], day[order], second[order]
    amount = amount[order]

    fraud_scenario = np.zeros(len(customer), dtype=np.int64)
    fraud_scenario[amount > config.fraud_amount_threshold] = 1

    terminal_events = _compromise_events(rng, n_terminals, days, config.terminal_compromise_rate)
    hit = _within_event(terminal, day, *terminal_events, config.terminal_compromise_days)
    fraud_scenario[hit] = 2

    customer_events = _compromise_events(rng, n_customers, days, config.customer_compromise_rate)
    exposed = _within_event(customer, day, *customer_events, config.customer_compromise_days)
    hit = exposed & (rng.random(len(customer)) < config.compromised_customer_fraud_share)
    amount[hit] = np.round(amount[hit] * config.compromised_customer_amount_factor, 2)
    fraud_scenario[hit] = 3

    seconds = day * _SECONDS_PER_DAY + second
    transactions = pd.DataFrame(
        {
            "TRANSACTION_ID": np.arange(len(customer), dtype=np.int64),
            "TX_DATETIME": (day0.as_unit("ns").value + seconds * 10**9).view("datetime64[ns]"),
            "CUSTOMER_ID": customer,
            "TERMINAL_ID": terminal,
            "TX_AMOUNT": amount,
            "TX_TIME_SECONDS": seconds,
            "TX_TIME_DAYS": day,
            "TX_FRAUD": (fraud_scenario > 0).astype(np.int64),
            "TX_FRAUD_SCENARIO": fraud_scenario,
        },
        columns=list(COLUMNS),
    )
    return SimulatedData(
        transactions=transactions,
        customers=pd.DataFrame(
            {
                "CUSTOMER_ID": np.arange(n_customers, dtype=np.int64),
                "x": customers["xy"][:, 0],
                "y": customers["xy"][:, 1],
                "mean_amount": customers["mean_amount"],
                "std_amount": customers["std_amount"],
                "mean_tx_per_day": customers["mean_tx_per_day"],
                "n_terminals": n_in_reach,
            }
        ),
        terminals=pd.DataFrame(
            {
                "TERMINAL_ID": np.arange(n_terminals, dtype=np.int64),
                "x": terminal_xy[:, 0],
                "y": terminal_xy[:, 1],
            }
        ),
        compromised_terminals=pd.DataFrame(
            {"TERMINAL_ID": terminal_events[0], "start_day": terminal_events[1]}
        ),
        compromised_customers=pd.DataFrame(
            {"CUSTOMER_ID": customer_events[0], "start_day": customer_events[1]}
        ),
    )


def _check_count(name: str, value: object, *, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _parse_start_date(start_date: str) -> pd.Timestamp:
    try:
        day0 = pd.Timestamp(start_date)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"start_date {start_date!r} is not a date") from exc
    if day0 is pd.NaT or day0.tzinfo is not None or day0 != day0.normalize():
        raise ValueError(f"start_date must be a naive date without time of day, got {start_date!r}")
    return day0


def _customer_profiles(
    rng: np.random.Generator, n_customers: int, config: GeneratorConfig
) -> dict[str, FloatArray]:
    xy = rng.uniform(0.0, config.area_size, size=(n_customers, 2))
    mean_amount = rng.uniform(*config.mean_amount_range, size=n_customers)
    mean_tx_per_day = rng.uniform(*config.tx_per_day_range, size=n_customers)
    return {
        "xy": xy,
        "mean_amount": mean_amount,
        "std_amount": mean_amount * config.std_amount_ratio,
        "mean_tx_per_day": mean_tx_per_day,
    }


def _terminals_in_reach(
    customer_xy: FloatArray, terminal_xy: FloatArray, radius: float
) -> tuple[IntArray, IntArray]:
    """Terminals within ``radius`` of each customer, as CSR offsets and indices.

    Customer ``c`` reaches ``reach[reach_start[c]:reach_start[c + 1]]`` (ascending).
    """
    block = max(1, _DISTANCE_BLOCK_CELLS // len(terminal_xy))
    counts = []
    indices = []
    for first in range(0, len(customer_xy), block):
        delta = customer_xy[first : first + block, None, :] - terminal_xy[None, :, :]
        near = np.einsum("ctk,ctk->ct", delta, delta) < radius * radius
        counts.append(near.sum(axis=1))
        indices.append(np.nonzero(near)[1])
    reach_start = np.zeros(len(customer_xy) + 1, dtype=np.int64)
    np.cumsum(np.concatenate(counts), out=reach_start[1:])
    return reach_start, np.concatenate(indices).astype(np.int64)


def _transaction_times(
    rng: np.random.Generator,
    mean_tx_per_day: FloatArray,
    n_in_reach: IntArray,
    days: int,
    config: GeneratorConfig,
) -> tuple[IntArray, IntArray, IntArray]:
    """Customer, day and second of day of every transaction (unsorted)."""
    per_day = rng.poisson(mean_tx_per_day[:, None], size=(len(mean_tx_per_day), days))
    per_day[n_in_reach == 0] = 0
    cell = np.repeat(np.arange(per_day.size, dtype=np.int64), per_day.ravel())
    customer, day = np.divmod(cell, days)
    second = np.floor(
        rng.normal(config.time_of_day_mean_seconds, config.time_of_day_std_seconds, size=len(cell))
    )
    in_day = (second >= 0) & (second < _SECONDS_PER_DAY)
    return customer[in_day], day[in_day], second[in_day].astype(np.int64)


def _amounts(rng: np.random.Generator, mean: FloatArray, std: FloatArray) -> FloatArray:
    amount = rng.normal(mean, std)
    negative = amount < 0
    amount[negative] = rng.uniform(0.0, 2 * mean[negative])
    # Cents, and never 0: a payment has a positive amount.
    return np.maximum(np.round(amount, 2), 0.01)


def _compromise_events(
    rng: np.random.Generator, population: int, days: int, rate: float
) -> tuple[IntArray, IntArray]:
    """Random ``(member, start_day)`` compromises, Poisson(``rate * population``) a day."""
    per_day = rng.poisson(rate * population, size=days)
    start_day = np.repeat(np.arange(days, dtype=np.int64), per_day)
    member = rng.integers(0, population, size=len(start_day), dtype=np.int64)
    return member, start_day


def _within_event(
    member: IntArray, day: IntArray, event_member: IntArray, event_start: IntArray, duration: int
) -> npt.NDArray[np.bool_]:
    """Whether ``day`` falls in ``[start, start + duration)`` of an event of ``member``.

    The latest event started on or before the day covers it if any does, so one
    binary search per transaction suffices.
    """
    if len(event_member) == 0:
        return np.zeros(len(member), dtype=bool)
    stride = np.int64(max(int(day.max(initial=0)), int(event_start.max())) + 1)
    event_key = np.sort(event_member * stride + event_start)
    latest = np.searchsorted(event_key, member * stride + day, side="right") - 1
    found = latest >= 0
    latest_key = event_key[np.maximum(latest, 0)]
    same_member = latest_key // stride == member
    return found & same_member & (day - latest_key % stride < duration)
