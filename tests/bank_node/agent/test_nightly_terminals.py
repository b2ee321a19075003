"""Consortium terminal features in the nightly run: pooled over HTTP before training, kept on the
node, and each night only the days no bank held yet are pooled again."""

from __future__ import annotations

import json
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from bank_node.agent.runner import BankAgent
from bank_node.agent.training import FEATURES_ATTRIBUTE, FeatureSettings, TransactionSource
from bank_node.features import TERMINAL_ID, compute_features
from bank_node.terminal_history import PooledHistory, pooling_scope, terminal_key
from bank_node.federated.evaluation import PRIVATE_BINS
from schemas.run import RunWindow, load_window
from tests.bank_node.agent.conftest import SETTINGS, XGB_PARAMS, Bank
from tests.bank_node.agent.fake_consortium import FakeConsortium
from tests.bank_node.agent.test_runner import run_concurrently

FIRST_NIGHT = date(2018, 5, 25)
PARAMS = {**XGB_PARAMS, "consortium_features": True, "terminal_threshold": 3}
TERMINAL_COLUMNS = [f"TERMINAL_ID_{kind}_{w}DAY_WINDOW" for w in (1, 7, 30) for kind in ("NB_TX", "RISK")]


def window(as_of: date, validation_days: int = 1) -> dict[str, object]:
    return {"as_of": as_of.isoformat(), "train_days": 7, "validation_days": validation_days, "label_delay_days": 7}


def nightly_agents(keyed_banks: list[Bank], bank_transactions: dict[str, pd.DataFrame]) -> dict[str, BankAgent]:
    agents = {}
    for bank in keyed_banks:
        path = bank.state.root / "transactions.parquet"
        bank_transactions[bank.bank_id].to_parquet(path)
        source = TransactionSource(path, train_start=None, train_days=7)

        def rows(run_window: object, source: TransactionSource = source) -> object:
            return source.rows(run_window)  # type: ignore[arg-type]

        agent = BankAgent(client=bank.client, identity=bank.identity, state=bank.state, training_rows=rows,  # type: ignore[arg-type]
                          transactions=source.transactions, terminal_history=PooledHistory.in_state_dir(bank.state.root),
                          settings=SETTINGS)
        agents[bank.bank_id] = agent
    return agents


def test_each_night_pools_only_the_new_day_and_trains_on_consortium_terminal_features(
    fake: FakeConsortium, keyed_banks: list[Bank], bank_transactions: dict[str, pd.DataFrame],
    transactions: pd.DataFrame,
) -> None:
    agents = nightly_agents(keyed_banks, bank_transactions)
    pooled_per_night = []
    for night in range(2):
        as_of = FIRST_NIGHT + timedelta(days=night)
        run_id = fake.open_run("xgboost", PARAMS, window=window(as_of))
        outcomes = run_concurrently({name: agent.run_once for name, agent in agents.items()})
        assert {o[0].status for o in outcomes.values()} == {"proposed"}, outcomes
        digests = {o[0].digest for o in outcomes.values()}
        assert len(digests) == 1  # every bank computed the same consortium features, so the same model
        records = [b.state.run_record(run_id) or {} for b in keyed_banks]
        pooled_per_night.append({r["terminal_days_pooled"] for r in records})
        run_window = load_window(window(as_of))
        scope = pooling_scope(run_window.train_start, run_window.labels_known_until, as_of)
        assert {r["terminal_days"] for r in records} == {len(scope.days)}
        # The first round of the run agrees the plan, then presence, then only the days to pool.
        keys = [r["key"] for r in fake.runs[run_id].to_json()["rounds"]]
        assert keys[0].startswith("terminals/plan/") and any(k.startswith("gbdt/") for k in keys)
    first_window = load_window(window(FIRST_NIGHT))
    first_scope = pooling_scope(first_window.train_start, first_window.labels_known_until, FIRST_NIGHT)
    # The second night: its one new day, and the day whose labels became known since.
    assert pooled_per_night == [{len(first_scope.days)}, {2}]

    # Every node holds the same history, keyed by the consortium's key (never sent to the server).
    secret = keyed_banks[0].state.load_secret_context()
    assert secret is not None
    key = terminal_key(secret)
    assert all(terminal_key(b.state.load_secret_context() or b"") == key for b in keyed_banks)
    histories = [agents[b.bank_id].terminal_history for b in keyed_banks]
    loaded = [h.load(next(iter(_key_ids(h))), _held_days(h), threshold=3) for h in histories if h is not None]
    assert all(np.array_equal(h.tag, loaded[0].tag) and np.array_equal(h.count, loaded[0].count) for h in loaded)

    # The consortium features of a covered row are those of the pooled transactions.
    as_of = FIRST_NIGHT + timedelta(days=1)
    run_window = load_window(window(as_of))
    bank = keyed_banks[0]
    own_rows = agents[bank.bank_id].training_rows(run_window)
    shared = own_rows.with_consortium_terminals(loaded[0], secret=key)
    assert shared.featured is not None and own_rows.featured is not None
    pooled = compute_features(
        transactions, start=run_window.train_start.isoformat(),
        end=(run_window.validation_start - timedelta(days=1)).isoformat()).set_index("transaction_id")
    covered = loaded[0].eligible(_tags(shared.featured[TERMINAL_ID], key))
    assert 0 < covered.sum() < len(covered)
    ids = shared.featured["transaction_id"].to_numpy()[covered]
    np.testing.assert_allclose(shared.featured.loc[covered, TERMINAL_COLUMNS].to_numpy(dtype=float),
                               pooled.loc[ids, TERMINAL_COLUMNS].to_numpy(dtype=float), rtol=1e-9, atol=1e-12)
    # Rows of terminals below the threshold keep the bank's own values.
    np.testing.assert_array_equal(shared.featured.loc[~covered, TERMINAL_COLUMNS].to_numpy(),
                                  own_rows.featured.loc[~covered, TERMINAL_COLUMNS].to_numpy())

    # The proposed model records how its inputs were built (the scoring service must build them so).
    agents[bank.bank_id].sync_models()
    files = [p for p in (bank.state.root / "models").glob("*") if p.is_file()]
    assert files and all(FeatureSettings.of_model_file(p.read_bytes()) == FeatureSettings(True, 3) for p in files)
    assert all(FEATURES_ATTRIBUTE in json.loads(p.read_bytes())["learner"]["attributes"] for p in files)


def _key_ids(history: PooledHistory) -> set[str]:
    from sqlalchemy import select

    from bank_node.terminal_history import pooled_days
    with history.engine.connect() as connection:
        return {row[0] for row in connection.execute(select(pooled_days.c.key_id))}


def _held_days(history: PooledHistory) -> list[int]:
    [key_id] = _key_ids(history)
    return sorted(history.pooled(key_id))


def _tags(terminals: pd.Series, key: bytes) -> np.ndarray:
    from bank_node.federated.terminal_stats import terminal_tags
    return terminal_tags(terminals.to_numpy(), key)


def test_a_run_with_consortium_features_but_no_window_or_history_is_refused_before_any_round(
    fake: FakeConsortium, keyed_banks: list[Bank], bank_transactions: dict[str, pd.DataFrame],
) -> None:
    bank = keyed_banks[0]
    path = bank.state.root / "transactions.parquet"
    bank_transactions[bank.bank_id].to_parquet(path)
    source = TransactionSource(path, train_start=date(2018, 5, 1), train_days=7)
    no_history = BankAgent(client=bank.client, identity=bank.identity, state=bank.state,
                           training_rows=source.rows, settings=SETTINGS)  # type: ignore[arg-type]
    run_id = fake.open_run("xgboost", PARAMS, window=window(FIRST_NIGHT))
    [outcome] = no_history.run_once()
    assert outcome.status == "failed" and "keeps no pooled terminal history" in outcome.message
    assert fake.runs[run_id].withdrawn == {bank.bank_id: outcome.message}
    assert fake.runs[run_id].to_json()["rounds"] == []


@pytest.mark.parametrize("params", [
    {"consortium_features": "yes"}, {"terminal_threshold": 2},
    {"terminal_dp_epsilon": 4.0, "consortium_features": True},  # noisy terminal counts with a non-private model
    {"terminal_dp_epsilon": 4.0, "dp_epsilon": 4.0},  # without consortium features
    {"terminal_dp_epsilon": 0.0, "dp_epsilon": 4.0, "consortium_features": True},
])
def test_feature_params_are_validated(params: dict[str, object]) -> None:
    from schemas.errors import FedfraudInputError
    from schemas.run import load_run_params

    with pytest.raises(FedfraudInputError) as caught:
        load_run_params("xgboost", params)
    assert set(caught.value.errors) == {f"params.{next(iter(params))}"}


def test_a_private_run_pools_noisy_day_counts_kept_apart_and_charges_them(
    fake: FakeConsortium, keyed_banks: list[Bank], bank_transactions: dict[str, pd.DataFrame],
    transactions: pd.DataFrame,
) -> None:
    import dataclasses

    from bank_node.agent.privacy_budget import PrivacyBudget
    from schemas.privacy import compose_epsilon, run_privacy

    private = {**PARAMS, "dp_epsilon": 8.0, "terminal_dp_epsilon": 4.0}
    agents = nightly_agents(keyed_banks, bank_transactions)
    watched = keyed_banks[0]
    agents[watched.bank_id].settings = dataclasses.replace(SETTINGS, privacy_budget=PrivacyBudget(epsilon=50.0))
    pooled_per_night = []
    for night in range(2):
        run_id = fake.open_run("xgboost", private, window=window(FIRST_NIGHT + timedelta(days=night)))
        outcomes = run_concurrently({name: agent.run_once for name, agent in agents.items()})
        assert {o[0].status for o in outcomes.values()} == {"proposed"}, outcomes
        # Each bank's history differs (its own counts exact, the others' noisy), the model does not:
        # it is grown from the same decrypted sums.
        assert len({o[0].digest for o in outcomes.values()}) == 1
        keys = [r["key"] for r in fake.runs[run_id].to_json()["rounds"]]
        assert any("/counts/" in k for k in keys)
        # No table of events is summed: neither times of day nor single events leave a bank.
        assert not [k for k in keys if k.startswith("terminals/") and "/a0/" in k and "presence" not in k]
        pooled_per_night.append({(b.state.run_record(run_id) or {})["terminal_days_pooled"] for b in keyed_banks})
        # The gate is private too: 16 bins per class and model, noisy counts (the pooled rows the
        # histograms add up to are not the banks' validation rows).
        rounds = fake.runs[run_id].rounds
        assert rounds is not None
        [gate_key] = [k for k in keys if k.startswith("eval/histograms")]
        models = 1 if night == 0 else 2  # the second night compares with the first night's model
        assert rounds._rounds[gate_key].n_values == 2 * models * PRIVATE_BINS + 1  # and the masks' check word
        validation = sum(agent.training_rows(RunWindow(as_of=FIRST_NIGHT + timedelta(days=night), train_days=1,
                                                       validation_days=0, label_delay_days=7)).y.size
                         for agent in agents.values())
        [noisy_rows] = {document["candidate"]["rows"] for document in fake.runs[run_id].assessments.values()}
        assert validation > 1000 and noisy_rows != validation
    assert pooled_per_night[1] == {2}  # the second night: only what no bank held yet

    history = agents[watched.bank_id].terminal_history
    assert history is not None
    [history_id] = _key_ids(history)
    assert history_id.endswith("/day-counts-eps-4")  # never mixed with exact events
    held = history.load(history_id, _held_days(history), threshold=1)
    assert (held.time_ns % (24 * 3600 * 10**9) == (24 * 3600 - 1) * 10**9).all()  # a row per terminal and day
    # Noisy: the consortium's day counts are not the pooled transactions' exact ones.
    day = transactions["timestamp"].to_numpy(dtype="datetime64[D]").astype(np.int64)
    exact = pd.Series(1, index=pd.MultiIndex.from_arrays([_tags(transactions[TERMINAL_ID], _key(watched)), day]))
    exact = exact.groupby(level=[0, 1]).sum()
    got = pd.Series(held.count, index=pd.MultiIndex.from_arrays([held.tag, held.time_ns // (24 * 3600 * 10**9)]))
    common = got.index.intersection(exact.index)
    assert len(common) > 100 and (got[common] != exact[common]).mean() > 0.5

    # The bank's budget was charged with both mechanisms: training sums and one day's counts.
    setting = run_privacy("xgboost", private)
    assert setting is not None and setting.terminal_multiplier is not None
    [first, second] = PrivacyBudget.charges(watched.state)
    assert first["terminal_epsilon"] == 4.0 and first["total_epsilon"] == pytest.approx(setting.total_epsilon)
    assert setting.total_epsilon > 8.0
    assert PrivacyBudget(epsilon=50.0).spent(watched.state) == pytest.approx(
        compose_epsilon(setting.mechanisms() * 2, 1e-5))

    # The model records it, and the scoring service reads the same noisy history.
    agents[watched.bank_id].sync_models()
    files = [p for p in (watched.state.root / "models").glob("*") if p.is_file()]
    assert files and all(FeatureSettings.of_model_file(p.read_bytes()).terminal_epsilon == 4.0 for p in files)


def _key(bank: Bank) -> bytes:
    secret = bank.state.load_secret_context()
    assert secret is not None
    return terminal_key(secret)
