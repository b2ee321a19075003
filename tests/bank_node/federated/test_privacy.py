"""Differential privacy of a bank's contributions: the noise it adds has the scale the run's
(epsilon, delta) requires, and clipping bounds what one transaction can change."""

from __future__ import annotations

import dataclasses

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp import RdpAccountant
from scipy import stats

import crypto
from bank_node.federated.binning import fine_grid, local_grid_counts
from bank_node.federated.feature_scales import clip_range, scales_for
from bank_node.federated.gbdt import federated_gbdt
from bank_node.federated.grower import TreeGrower
from bank_node.federated.lockstep import run_lockstep
from bank_node.federated.logreg import LogRegParams, federated_logreg
from bank_node.federated.params import GBDTParams
from bank_node.federated.party import make_level_payload, tree_gradients
from bank_node.federated.privacy import PrivateContribution
from bank_node.federated.rounds import SumRequest
from bank_node.features import MODEL_INPUTS
from consortium.secure_sum import SecureSum
from schemas.errors import FedfraudInputError
from schemas.privacy import compose_epsilon, has_gate, noise_multiplier, releases, run_privacy
from schemas.run import load_run_params, split_run_params
from tests.bank_node.federated.conftest import make_features

PARAMS = GBDTParams(n_trees=3, max_depth=2, n_bins=16)


def _setting(epsilon: float = 2.0, **params: float) -> PrivateContribution:
    privacy = run_privacy("xgboost", {"n_trees": PARAMS.n_trees, "max_depth": PARAMS.max_depth,
                                      "dp_epsilon": epsilon, **params})
    assert privacy is not None
    return PrivateContribution(privacy, rng=np.random.default_rng(20261203))


class _Silent(PrivateContribution):
    """Clips and post-processes as the real one, adds nothing."""

    def noisy(self, values: object, sensitivity: float) -> np.ndarray:
        return np.asarray(values, dtype=np.float64)


def _clip_only(privacy: PrivateContribution) -> PrivateContribution:
    return dataclasses.replace(privacy, privacy=dataclasses.replace(privacy.privacy, multiplier=0.0))


@pytest.mark.parametrize("epsilon", [0.5, 1.0, 4.0, 8.0])
@pytest.mark.parametrize("n_releases", [1, 16, 301])
def test_the_multiplier_composes_to_the_runs_epsilon(epsilon: float, n_releases: int) -> None:
    multiplier = noise_multiplier(epsilon, 1e-5, n_releases)
    accountant = RdpAccountant()
    accountant.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(multiplier), n_releases))
    spent = accountant.get_epsilon(1e-5)
    assert epsilon * 0.98 <= spent <= epsilon * 1.0001
    # less noise would overspend: the multiplier is the smallest that holds
    assert compose_epsilon([(multiplier * 0.97, n_releases)], 1e-5) > epsilon


def test_runs_compose_across_nights_tighter_than_adding_up() -> None:
    one = run_privacy("xgboost", {"n_trees": 100, "max_depth": 3, "dp_epsilon": 2.0})
    assert one is not None and one.releases == 301
    seven = compose_epsilon([(one.multiplier, one.releases)] * 7, one.delta)
    assert 2.0 < seven < 7 * 2.0
    assert compose_epsilon([], 1e-5) == 0.0 and compose_epsilon([(0.0, 1)], 1e-5) == float("inf")


def _first_requests(X: np.ndarray, y: np.ndarray, privacy: PrivateContribution | None) -> list[np.ndarray]:
    """What a bank sends for the bins and the first tree's root, answered with its own vectors."""
    algorithm = federated_gbdt(X, y, params=PARAMS, scales=SCALES, party_index=0, privacy=privacy)
    sent = []
    request = next(algorithm)
    for _ in range(2):
        sent.append(request.vector)
        request = algorithm.send(np.asarray(request.vector))
    return sent


X, Y, SCALES = make_features(3000, seed=5)


def test_the_noise_added_has_the_configured_scale() -> None:
    """The vectors a bank sends under DP minus the exact ones: Gaussian, mean 0, of standard
    deviation multiplier x sensitivity, for the bins' counts and for a level's histograms."""
    privacy = _setting(epsilon=1.0)
    noisy_counts, noisy_root = _first_requests(X, Y, privacy)
    counts = local_grid_counts(X, fine_grid(SCALES))
    for noise, sensitivity in ((noisy_counts - counts, privacy.counts_sensitivity(X.shape[1])),):
        expected = privacy.privacy.multiplier * sensitivity
        assert noise.size > 5000
        assert abs(noise.std() / expected - 1) < 0.05
        assert abs(noise.mean()) < 4 * expected / np.sqrt(noise.size)
        assert stats.kstest(noise / expected, "norm").pvalue > 0.001

    # A level's histograms: the exact ones (a silent bank with the same cuts) against noisy
    # ones drawn afresh 40 times on the same cuts.
    def root(contribution: PrivateContribution) -> np.ndarray:
        algorithm = federated_gbdt(X, Y, params=PARAMS, scales=SCALES, party_index=0, privacy=contribution)
        next(algorithm)
        return np.asarray(algorithm.send(np.asarray(noisy_counts)).vector)

    exact_root = root(_Silent(privacy.privacy))
    noise = np.concatenate([root(PrivateContribution(privacy.privacy, rng=np.random.default_rng([7, draw])))
                            - exact_root for draw in range(40)])
    expected = privacy.privacy.multiplier * privacy.histogram_sensitivity(X.shape[1])
    assert noise.size > 2000
    assert abs(noise.std() / expected - 1) < 0.05
    assert abs(noise.mean()) < 4 * expected / np.sqrt(noise.size)
    assert stats.kstest(noise / expected, "norm").pvalue > 0.001


def test_noise_needs_no_seed_and_differs_each_time() -> None:
    privacy = run_privacy("xgboost", {"dp_epsilon": 4.0})
    assert privacy is not None
    a, b = PrivateContribution(privacy), PrivateContribution(privacy)
    assert not np.allclose(a.noisy(np.zeros(100), 1.0), b.noisy(np.zeros(100), 1.0))


def test_clipping_bounds_one_transactions_influence_on_a_level() -> None:
    """Adding one extreme transaction (a huge fraud, weighted 50 times) changes what a bank
    sends for a level by at most the sensitivity the noise is calibrated to; without clipping
    it would change it by more."""
    params = dataclasses.replace(PARAMS, scale_pos_weight=50.0)
    privacy = _clip_only(_setting())
    bins = np.random.default_rng(1).integers(0, 16, size=(500, X.shape[1]))
    labels = (np.arange(500) % 9 == 0).astype(np.float32)
    extreme = np.vstack([bins, np.full((1, X.shape[1]), 15)])
    grower = TreeGrower(params=params, bins_per_feature=np.full(X.shape[1], 16), features=np.arange(X.shape[1]),
                        cuts=[np.arange(15, dtype=np.float32)] * X.shape[1])
    request = grower.request
    assert request is not None

    def sent(rows: np.ndarray, y: np.ndarray, clip: bool) -> np.ndarray:
        grad, hess = tree_gradients(np.full(len(y), 2.0, dtype=np.float32), y, params, tree_index=0)
        if clip:
            grad, hess = privacy.clip_gradients(grad, hess)
        return make_level_payload(rows, grad, hess, np.zeros(len(y), dtype=np.int32), request)

    y_extreme = np.append(labels, 1.0).astype(np.float32)
    change = np.linalg.norm(sent(extreme, y_extreme, True) - sent(bins, labels, True))
    assert change <= privacy.histogram_sensitivity(X.shape[1]) + 1e-9
    assert change > 0.5 * privacy.histogram_sensitivity(X.shape[1])  # the bound is nearly reached
    unclipped = np.linalg.norm(sent(extreme, y_extreme, False) - sent(bins, labels, False))
    assert unclipped > 5 * privacy.histogram_sensitivity(X.shape[1])


def test_clipping_bounds_one_transactions_influence_on_logistic_regression() -> None:
    """One extreme transaction (every feature far beyond its declared range, a fraud, weighted
    by the balanced class weight) changes the Hessian bound and a round's gradient a bank sends by
    at most the sensitivities their noise is calibrated to."""
    scales = scales_for(MODEL_INPUTS)
    rng = np.random.default_rng(2)
    rows = np.column_stack([rng.uniform(lo, hi, 400) for lo, hi in (clip_range(s) for s in scales)])
    y = (np.arange(400) % 7 == 0).astype(np.float64)
    outlier = np.full((1, len(scales)), 1e7)
    setting = run_privacy("logreg", {"dp_epsilon": 1.0})
    assert setting is not None and setting.releases == 32
    privacy = _Silent(setting)

    def sent(X_: np.ndarray, y_: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        algorithm = federated_logreg(X_, y_, params=LogRegParams(), scales=scales, privacy=privacy)
        next(algorithm)
        bound: SumRequest = algorithm.send(np.array([400.0, 58.0]))  # the same consortium counts for both
        size = len(scales) + 1
        gradient: SumRequest = algorithm.send(np.eye(size).ravel() * 100.0 / 400.0)
        return np.asarray(bound.vector) * 400.0, np.asarray(gradient.vector) * 400.0

    (bound_with, gradient_with), (bound_without, gradient_without) = sent(np.vstack([rows, outlier]),
                                                                          np.append(y, 1.0)), sent(rows, y)
    size = len(scales) + 1
    assert 0 < np.linalg.norm(bound_with - bound_without) <= privacy.bound_sensitivity(size) + 1e-9
    assert 0 < np.linalg.norm(gradient_with - gradient_without) <= privacy.gradient_sensitivity(size) + 1e-9


def test_a_private_run_trains_the_same_model_on_every_bank() -> None:
    """Noise or not, every bank grows its trees from the same decrypted sums."""
    parts = [slice(0, 1800), slice(1800, 2500), slice(2500, 3000)]
    setting = run_privacy("xgboost", {"n_trees": PARAMS.n_trees, "max_depth": PARAMS.max_depth, "dp_epsilon": 4.0})
    assert setting is not None
    algorithms = {f"bank-{i}": federated_gbdt(X[p], Y[p], params=PARAMS, scales=SCALES, party_index=i,
                                              privacy=PrivateContribution(setting, n_parties=3,
                                                                          rng=np.random.default_rng(i)))
                  for i, p in enumerate(parts)}
    secret = crypto.generate("plain")
    run = run_lockstep(algorithms, contexts={bank: secret for bank in algorithms},
                       aggregator=SecureSum(context=crypto.load_context(secret.public_context(), require_public=True)))
    probabilities = [m.predict_proba(X[:50]) for m in run.results.values()]
    assert all(np.array_equal(probabilities[0], p) for p in probabilities[1:])


def test_run_params_carry_privacy_on_both_sides() -> None:
    params = {"n_trees": 10, "max_depth": 3, "dp_epsilon": 4, "dp_delta": 1e-6, "dp_clip": 0.5}
    own, features = split_run_params("xgboost", params)
    assert own == {"n_trees": 10, "max_depth": 3} and features == {}
    privacy = run_privacy("xgboost", load_run_params("xgboost", params))
    assert privacy is not None and privacy.releases == releases("xgboost", params) == 31
    assert (privacy.epsilon, privacy.delta, privacy.clip) == (4.0, 1e-6, 0.5)
    assert run_privacy("logreg", {"max_rounds": 10}) is None
    for bad, field in (({"dp_delta": 1e-6}, "params.dp_delta"), ({"dp_epsilon": 0}, "params.dp_epsilon"),
                       ({"dp_epsilon": 1, "dp_delta": 0.5}, "params.dp_delta"),
                       ({"dp_epsilon": "much"}, "params.dp_epsilon"), ({"dp_epsilon": 1, "dp_clip": -1}, "params.dp_clip")):
        with pytest.raises(FedfraudInputError) as caught:
            load_run_params("logreg", bad)
        assert field in caught.value.errors


def test_the_promotion_gate_is_a_release_of_the_run_with_its_own_epsilon() -> None:
    """A private run's gate (score histograms of the candidate and the current model) is charged
    as one more release, at gate_dp_epsilon (the run's dp_epsilon unless set)."""
    params = {"n_trees": 10, "max_depth": 3, "dp_epsilon": 2.0}
    default = run_privacy("xgboost", load_run_params("xgboost", params))
    own = run_privacy("xgboost", load_run_params("xgboost", {**params, "gate_dp_epsilon": 0.5}))
    assert default is not None and own is not None
    assert default.gate_epsilon == 2.0 and own.gate_epsilon == 0.5
    assert default.gate_multiplier == noise_multiplier(2.0, 1e-5, 1)
    assert default.mechanisms() == [(default.multiplier, 31), (default.gate_multiplier, 1)]
    assert default.total_epsilon == compose_epsilon(default.mechanisms(), 1e-5)
    assert 2.0 < own.total_epsilon < default.total_epsilon  # a cheaper gate, the same training
    recorded = default.to_json()
    assert recorded["gate_noise_multiplier"] == default.gate_multiplier and recorded["total_epsilon"] > 2.0
    assert default.mechanisms_of(recorded) == default.mechanisms()
    assert split_run_params("xgboost", {**params, "gate_dp_epsilon": 0.5})[0] == {"n_trees": 10, "max_depth": 3}
    # A run without validation days evaluates nothing: it is not charged for a gate.
    ungated = run_privacy("xgboost", load_run_params("xgboost", params), gate=False)
    assert ungated is not None and ungated.gate_multiplier is None and "gate_epsilon" not in ungated.to_json()
    assert ungated.mechanisms() == [(default.multiplier, 31)] and ungated.total_epsilon == 2.0
    assert has_gate({"validation_days": 7}) and not has_gate({"validation_days": 0}) and not has_gate(None)
    # A window that leaves its validation days out has the default, and its gate, as the agents
    # load it and run it: the spend recorded and checked must count that gate (an operator could
    # otherwise serve such a window and have the gate's release left out of every record).
    from schemas.run import load_window

    for window in ({"as_of": "2026-01-10", "train_days": 7}, {"as_of": "2026-01-10", "train_days": 7,
                                                             "validation_days": 0}):
        assert has_gate(window) == (load_window(window).validation_days > 0)
    assert has_gate({"as_of": "2026-01-10", "train_days": 7})
    for bad in ({"gate_dp_epsilon": 1.0}, {"dp_epsilon": 1.0, "gate_dp_epsilon": 0}):
        with pytest.raises(FedfraudInputError) as caught:
            load_run_params("xgboost", bad)
        assert "params.gate_dp_epsilon" in caught.value.errors


def test_the_gates_noise_has_its_scale_and_its_comparison_stays_close() -> None:
    """Each bank's gate histograms carry noise of standard deviation gate multiplier x sqrt(models)
    (one transaction is in one bin of each model's histogram), in PRIVATE_BINS bins per class; on
    five banks' validation weeks of handbook size (60,000 rows, about 450 frauds) at gate epsilon 4,
    what the gate decides on (the candidate's AUC minus the current model's) stays within 0.05 of
    its exact value, and negative noisy counts read as 0."""
    from bank_node.federated.evaluation import PRIVATE_BINS, federated_evaluation, metrics_from_histograms

    privacy = run_privacy("xgboost", {"dp_epsilon": 1.0, "gate_dp_epsilon": 4.0})
    assert privacy is not None and privacy.gate_multiplier is not None
    rng = np.random.default_rng(20261203)
    banks = []
    for _ in range(5):
        y = (rng.random(12_000) < 0.0075).astype(np.float64)
        banks.append((rng.normal(0, 1, (y.size, 1)) + 2.5 * y[:, None], y))

    def candidate(rows: np.ndarray) -> np.ndarray:
        return np.asarray(1 / (1 + np.exp(-(rows[:, 0] * 2 - 6))))

    def current(rows: np.ndarray) -> np.ndarray:  # worse: a noisier view of the same signal
        return np.asarray(1 / (1 + np.exp(-((rows[:, 0] + rng.normal(0, 0.8, rows.shape[0])) * 2 - 6))))

    def sent(X: np.ndarray, y: np.ndarray, draw: int | None) -> np.ndarray:
        noise = None if draw is None else PrivateContribution(privacy, rng=np.random.default_rng([3, draw])).gate_noisy
        algorithm = federated_evaluation([candidate, candidate], X, y, n_bins=PRIVATE_BINS, noise=noise)
        request = next(algorithm)
        assert request.vector.size == 2 * 2 * PRIVATE_BINS
        return np.asarray(request.vector)

    X, y = banks[0]
    noise = np.concatenate([sent(X, y, draw) - sent(X, y, None) for draw in range(20)])
    expected = privacy.gate_multiplier * np.sqrt(2)
    assert abs(noise.std() / expected - 1) < 0.05
    assert stats.kstest(noise / expected, "norm").pvalue > 0.001

    def pooled(draws: list[int | None]) -> tuple[float, float]:
        vectors = []
        for draw, (X, y) in zip(draws, banks, strict=True):
            noise = None if draw is None else PrivateContribution(privacy, rng=np.random.default_rng([5, draw])).gate_noisy
            request = next(federated_evaluation([candidate, current], X, y, n_bins=PRIVATE_BINS, noise=noise))
            vectors.append(np.asarray(request.vector))
        total, width = sum(vectors), 2 * PRIVATE_BINS
        first, second = (metrics_from_histograms(total[i * width:(i + 1) * width]).auc for i in range(2))
        return first, second

    rng = np.random.default_rng(11)
    exact = pooled([None] * 5)
    rng = np.random.default_rng(11)  # the same current-model scores, now with the banks' noise
    noisy = pooled(list(range(5)))
    assert exact[0] - exact[1] > 0.02  # the candidate is better, and the noisy gate sees it too
    assert abs((noisy[0] - noisy[1]) - (exact[0] - exact[1])) < 0.05, (noisy, exact)
    assert metrics_from_histograms(np.array([5.0, -3.0, -1.0, 2.0])).auc == 1.0  # read as [5, 0] and [0, 2]
