"""The bank node agent: poll the consortium for open runs, take part, propose, fetch the model.

For each open run that lists this bank as a participant and that this bank has not finished,
the agent builds the run's algorithm over its own training rows, drives it through an
:class:`~bank_node.agent.http_channel.HttpChannel` with a
:class:`~bank_node.federated.rounds.BankRunner` (the secret HE key decrypts the released sums),
proposes the finished model, signed, and records the run as done in its state directory. Published
models are downloaded into the state directory.

Restart safety comes from the protocol, not from checkpoints: an agent that stopped half-way
re-runs the algorithm from the start; the consortium answers 409 to contributions it already
holds, the channel fetches the released sums instead, and since each step is a deterministic
function of the sums, the agent arrives where it was.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from bank_node.agent.ceremony import check_consortium_key, load_secret_scheme
from bank_node.agent.client import ConsortiumClient
from bank_node.agent.errors import (
    AuthError,
    CeremonyError,
    ConflictError,
    ConsortiumError,
    NotFoundError,
    RoundFailedError,
)
from bank_node.agent.http_channel import HttpChannel
from bank_node.agent.identity import BankIdentity
from bank_node.agent.ledger_watch import LedgerWatch
from bank_node.agent.metrics import AgentMetrics
from bank_node.agent.membership import PinnedRoster, load_pinned
from bank_node.agent.privacy_budget import BudgetExceeded, PrivacyBudget
from bank_node.agent.resources import ModelInfo, RunInfo
from bank_node.agent.state import StateDir
from bank_node.agent.terminals import TerminalPlan, Transactions, plan_terminals, pool_terminals
from bank_node.agent.training import FeatureSettings, Rows, feature_settings, prepare_run
from bank_node.federated.evaluation import DEFAULT_BINS, PRIVATE_BINS, pooled_evaluation
from bank_node.federated.privacy import PrivateContribution
from bank_node.federated.logreg import LogRegModel
from bank_node.federated.rounds import MIN_QUORUM, BankRunner
from bank_node.federated.terminal_stats import ConsortiumHistory
from bank_node.federated.xgb_export import from_xgboost_json
from bank_node.terminal_history import PooledHistory
from crypto.masking import MaskSession
from crypto.roster import Roster
from crypto.signing import SignatureError, b64decode_key, proposal_message, verify
from crypto.scheme import CryptoError, HEScheme
from schemas.assessment import Assessment
from schemas.privacy import RunPrivacy, has_gate, run_privacy
from schemas.round_key import algorithm_key, training_progress
from schemas.run import RunWindow, load_run_params, load_window

__all__ = ["AgentSettings", "BankAgent", "RunOutcome"]

log = logging.getLogger(__name__)

PROPOSED = "proposed"
PUBLISHED = "published"
REFUSED = "refused"
"""A published model this bank will not use: not its own proposal, or not signed by its quorum."""
FAILED = "failed"
RETRY = "retry"
_FINISHED = (PROPOSED, PUBLISHED, REFUSED, FAILED)


@dataclass(frozen=True, kw_only=True)
class AgentSettings:
    """How the agent polls and waits.

    Parameters
    ----------
    poll_interval_s
        Pause between two looks at the open runs.
    round_wait_s
        Longest wait for one round's sum; by default the run's ``round_timeout_s`` plus
        ``round_wait_margin_s`` (the consortium decides a round by its deadline).
    round_wait_margin_s
        See ``round_wait_s``.
    sum_poll_initial_s, sum_poll_max_s
        First and longest pause between polls of an open round.
    quorum
        The fewest banks this bank accepts in a sum (its own setting, at least 3; the server's
        is not trusted).
    development
        Take part under the unencrypted ``plain`` scheme (tests only; refused otherwise).
    max_promotion_tolerance
        The largest AUC loss this bank lets a run's gate accept (the operator sets the run's; a
        bank does not sign an assessment that would promote anything).
    require_ledger
        Take part only with a consortium whose contribution ledger this agent can watch (a
        consortium that stops serving it cannot switch the checks off).
    privacy_budget
        The differential-privacy budget of this bank's transactions: with one, the agent takes
        part only in private runs that keep its spend over the budget's period within it.
    """

    poll_interval_s: float = 30.0
    round_wait_s: float | None = None
    round_wait_margin_s: float = 120.0
    sum_poll_initial_s: float = 0.02
    sum_poll_max_s: float = 2.0
    quorum: int = MIN_QUORUM
    development: bool = False
    max_promotion_tolerance: float = 0.05
    require_ledger: bool = True
    privacy_budget: PrivacyBudget | None = None


@dataclass(frozen=True)
class RunOutcome:
    """What the agent did with one run.

    Attributes
    ----------
    run_id
        The run.
    status
        ``proposed`` (model proposed), ``failed`` (recorded; not retried), or ``retry``
        (the consortium was unreachable or slow; the next poll resumes it).
    message
        A sentence for the operator.
    digest
        SHA-256 of the proposed model file, when proposed.
    """

    run_id: str
    status: str
    message: str = ""
    digest: str = ""


class ProgressLog:
    """Logs a run's progress at INFO: at each new phase or tree, and at least every ``every_s``
    seconds (rounds done of expected, tree, phase), read from the released round keys."""

    def __init__(self, run: RunInfo, *, clock: Callable[[], float], every_s: float = 10.0) -> None:
        self.run = run
        self.clock = clock
        self.every_s = every_s
        self.keys: list[str] = []
        self._last_step = ""
        self._last_at = clock()
        self._started = clock()

    def __call__(self, round_key: str) -> None:
        self.keys.append(round_key)
        # The step ("gbdt/tree-3", "logreg/round-2", ...) comes from this key alone; the whole
        # progress is read from every key only when a line is written.
        step = "/".join(algorithm_key(round_key).split("/")[:2])
        now = self.clock()
        if step == self._last_step and now - self._last_at < self.every_s:
            return
        self._last_step, self._last_at = step, now
        progress = training_progress(self.run.model, dict(self.run.params), self.keys)
        tree = f", tree {progress['tree']} of {progress['n_trees']}" if "n_trees" in progress else ""
        log.info("run %s: %s, %d of at most %s rounds%s, %.1fs", self.run.run_id, progress["phase"],
                 progress["rounds_released"], progress.get("rounds_expected", "?"), tree, now - self._started)


def _scorer(model: Any) -> Callable[[Any], Any]:
    """Rows to fraud probabilities, for a GBDT or logistic-regression model."""
    def score(X: Any) -> Any:
        scores = np.asarray(model.predict_proba(X), dtype=np.float64)
        return scores[:, 1] if scores.ndim == 2 else scores
    return score


@dataclass(frozen=True)
class _Preparation:
    """What :meth:`BankAgent._prepare` checked and gathered before the first round."""

    context: HEScheme
    roster: Roster
    window: RunWindow | None
    rows: Rows
    terminals: TerminalPlan | None
    baseline: tuple[Callable[[Any], Any], FeatureSettings] | None = None


class CannotTakePartError(ValueError):
    """This bank will not take part in a run (said to the consortium, which goes on without it)."""


class BankAgent:
    """One bank's node agent.

    Parameters
    ----------
    client
        Client authenticated as this bank.
    identity
        This bank's keys.
    state
        The state directory (HE secret key, finished runs, models).
    training_rows
        Returns the bank's current training rows for a run's window (None: the agent's own
        default period, for runs that carry no window); called once per run.
    settings
        Polling and waiting.
    transactions, terminal_history
        The bank's labelled transactions between two days, and the node's pooled consortium
        terminal history: what runs with consortium features need (refused without them).
    sleep, clock
        Injected for tests.
    """

    def __init__(
        self,
        *,
        client: ConsortiumClient,
        identity: BankIdentity,
        state: StateDir,
        training_rows: Callable[[RunWindow | None], Rows],
        settings: AgentSettings = AgentSettings(),
        transactions: Transactions | None = None,
        terminal_history: PooledHistory | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        metrics: AgentMetrics | None = None,
    ) -> None:
        self.metrics = metrics
        if metrics is not None and settings.privacy_budget is not None:
            budget = settings.privacy_budget
            metrics.spend_from(lambda: budget.spent(state))
        self.client = client
        self.identity = identity
        self.state = state
        self.training_rows = training_rows
        self.transactions = transactions
        self.terminal_history = terminal_history
        self.settings = settings
        self.ledger = LedgerWatch(client, state, identity.bank_id, required=settings.require_ledger)
        self._sleep = sleep
        self._clock = clock

    @property
    def bank_id(self) -> str:
        """This bank's id."""
        return self.identity.bank_id

    def _keep_receipt(self, run_id: str, round_key: str, payload: bytes, receipt: dict[str, Any] | None,
                      privacy_receipt: dict[str, Any] | None, *, privacy: RunPrivacy | None) -> None:
        if self.metrics is not None:
            self.metrics.contributed(payload)
        self.ledger.keep(run_id, round_key, payload, receipt, privacy_receipt=privacy_receipt, privacy=privacy)

    # ---------------------------------------------------------------------------- loop

    def run_once(self) -> list[RunOutcome]:
        """Check that the consortium's ledger only grew, take part in every open run this bank
        has not finished, then fetch published models.

        Raises
        ------
        LedgerRewrittenError
            The ledger was rewritten or forked: nothing more is done.
        """
        if self.ledger.watch() is None and self.settings.require_ledger:
            log.warning("the ledger could not be checked now: nothing is done before it can be")
            return []
        # The current models first: a run's baseline is the consortium's current model, which an
        # operator may just have rolled back.
        self.follow_current_models()
        outcomes = [self.take_part(run) for run in self.pending_runs()]
        self.sync_models()
        self.follow_current_models()
        if self.metrics is not None:
            for outcome in outcomes:
                self.metrics.runs.labels(outcome=outcome.status).inc()
        return outcomes

    def follow_current_models(self) -> None:
        """Record which version of each family the consortium serves now (an operator may roll
        back to an earlier promoted one); the scoring service serves it if this bank kept it."""
        try:
            current = self.client.current_models()
        except AuthError:
            raise
        except ConsortiumError as exc:  # read again at the next poll; the runs' outcomes are kept
            log.warning("the consortium's current models not read now: %s", exc)
            if self.metrics is not None:
                self.metrics.polled(answered=False)
            return
        if self.metrics is not None:
            self.metrics.polled(answered=True)
            self.metrics.follow(current)
        if current != self.state.current_models():
            self.state.save_current_models(current)
            log.info("the consortium serves %s", ", ".join(f"{f} {c['version']}" for f, c in sorted(current.items())))

    def run_forever(self, stop: threading.Event | None = None) -> None:
        """Poll until ``stop`` is set; an unreachable consortium is waited out, not fatal.

        Raises
        ------
        AuthError, CeremonyError
            Problems only an operator can fix.
        """
        stop = stop or threading.Event()
        while not stop.is_set():
            try:
                self.run_once()
            except (AuthError, CeremonyError):
                raise
            except ConsortiumError as exc:
                log.warning("polling the consortium failed, will try again: %s", exc)
            stop.wait(self.settings.poll_interval_s)

    def pending_runs(self) -> list[RunInfo]:
        """Open runs that list this bank and that it has not finished, oldest first.

        Every bank takes its runs in the same order: two banks waiting for each other in two
        different runs would otherwise both wait until the rounds' deadlines.
        """
        records = self.state.runs()
        pending = [
            run
            for run in self.client.list_runs(state="open")
            if self.bank_id in run.participants and records.get(run.run_id, {}).get("status") not in _FINISHED
        ]
        return sorted(pending, key=lambda r: (r.created_at, r.run_id))

    # ------------------------------------------------------------------------ one run

    def take_part(self, run: RunInfo) -> RunOutcome:
        """Train the run's model with the consortium and propose it; record what happened.

        Raises
        ------
        AuthError, CeremonyError
            Problems only an operator can fix; nothing is recorded.
        """
        log.info("run %s: taking part (model=%s, %d banks)", run.run_id, run.model, len(run.active))
        try:
            prepared = self._prepare(run)
        except (AuthError, CeremonyError):
            raise
        except (CannotTakePartError, ValueError) as exc:
            # Refused before any round: the consortium hears why, and the others go on without us.
            return self._withdraw(run, str(exc))
        try:
            outcome = self._train_and_propose(run, prepared)
        except (AuthError, CeremonyError):
            raise
        except CannotTakePartError as exc:  # e.g. a baseline it cannot trust: said, not left waiting
            return self._withdraw(run, str(exc))
        except RoundFailedError as exc:
            outcome = self._record_failure(run, exc.message)
        except ConsortiumError as exc:
            if exc.retryable:
                log.warning("run %s: consortium unavailable or slow, resuming on the next poll: %s", run.run_id, exc)
                return RunOutcome(run.run_id, RETRY, str(exc))
            outcome = self._record_failure(run, str(exc))
        except (ValueError, CryptoError) as exc:
            # Invalid params, unusable data, a sum the key cannot decrypt: retrying gives the same.
            outcome = self._record_failure(run, str(exc))
        return outcome

    def _prepare(self, run: RunInfo) -> _Preparation:
        """Everything checked before the first round: the key, the roster, params, window, data.

        Raises
        ------
        CannotTakePartError, ValueError
            This bank cannot take part (said to the consortium as a withdrawal).
        CeremonyError
            A key or roster problem only an operator can fix.
        """
        context = load_secret_scheme(self.state)
        if context.name == "plain" and not self.settings.development:
            raise CeremonyError(
                "this bank holds a 'plain' key, which encrypts nothing: it takes part only in "
                "development mode (--development); run the key ceremony with ckks or paillier"
            )
        pinned = check_consortium_key(self.client, self.identity, self.state, context)
        roster = pinned.roster
        outsiders = sorted(set(run.participants) - set(roster.bank_ids))
        if outsiders:
            # The operator chose the participants; the banks chose the members. A bank outside
            # the pinned roster gets no mask, no key, and no say in a sum this bank accepts.
            raise CannotTakePartError(
                f"run {run.run_id} lists {', '.join(outsiders)}, not members of the pinned roster "
                f"(version {roster.version}): this bank does not take part"
            )
        if run.key_id and run.key_id != context.key_id:
            raise CannotTakePartError(
                f"run {run.run_id} was opened under HE key {run.key_id}; this bank holds {context.key_id}"
            )
        tolerance = float(run.promotion_tolerance or 0.0)
        if tolerance > self.settings.max_promotion_tolerance:
            raise CannotTakePartError(
                f"run {run.run_id} would promote a candidate up to {tolerance:g} AUC worse than the current "
                f"model; this bank accepts at most {self.settings.max_promotion_tolerance:g}")
        if self.settings.privacy_budget is not None:  # the bank's own limit first: nothing else matters past it
            self.settings.privacy_budget.check(self.state, run.run_id,
                                               run_privacy(run.model, load_run_params(run.model, run.params),
                                                           gate=has_gate(run.window)))
        window = None if run.window is None else load_window(run.window)
        self._check_gate(run, window)
        # The baseline is checked before any round: a baseline this bank cannot use costs no training.
        baseline = None
        if run.baseline_version is not None and window is not None and window.validation_days > 0:
            baseline = self._baseline_scorer(run)
        rows = self.training_rows(window)
        prepare_run(run.model, run.params, rows, party_index=run.party_index(self.bank_id))  # checks the params
        features = feature_settings(run.model, run.params)
        terminals = None
        if features.consortium:
            terminals = plan_terminals(run, window, settings=features, key_id=context.key_id,
                                       secret_context=self.state.load_secret_context() or b"",
                                       transactions=self.transactions, history=self.terminal_history)
        return _Preparation(context=context, roster=roster, window=window, rows=rows, terminals=terminals,
                            baseline=baseline)

    def _check_gate(self, run: RunInfo, window: RunWindow | None) -> None:
        """Once this bank serves a model of the run's family, a candidate replaces it only through
        the promotion gate: validation days, and a baseline no older than the model it serves. The
        operator alone cannot skip the gate (no validation days, no baseline) nor stage it against
        a weaker, older model.

        Raises
        ------
        CannotTakePartError
            The run would bypass the gate; the message says how.
        """
        serving = self.state.served_model(run.model)
        if serving is None:
            return  # the family's first model: nothing to replace, its metrics are its own
        version = str(serving["version"])
        if window is None or window.validation_days == 0:
            raise CannotTakePartError(
                f"run {run.run_id} has no validation days: its {run.model} model would replace model {version}, "
                f"which this bank serves, without the promotion gate")
        if run.baseline_version is None:
            raise CannotTakePartError(
                f"run {run.run_id} names no baseline: its {run.model} model would replace model {version}, "
                f"which this bank serves, without being compared with it")
        if version.isdigit() and run.baseline_version < int(version):
            raise CannotTakePartError(
                f"run {run.run_id} compares its candidate with model {run.baseline_version}, older than model "
                f"{version}, which this bank serves")

    def _train_and_propose(self, run: RunInfo, preparation: _Preparation) -> RunOutcome:
        context, roster, window, rows = preparation.context, preparation.roster, preparation.window, preparation.rows
        privacy = run_privacy(run.model, run.params, gate=has_gate(run.window))
        channel = HttpChannel(
            signing_keys={b: key for b, key in roster.signing_keys().items() if b in run.participants},
            client=self.client,
            identity=self.identity,
            run_id=run.run_id,
            timeout_s=self._round_wait_s(run),
            poll_initial_s=self.settings.sum_poll_initial_s,
            poll_max_s=self.settings.sum_poll_max_s,
            receipts=functools.partial(self._keep_receipt, privacy=privacy),
            replayed=lambda run_id, round_key, receipt: self.ledger.keep_privacy(run_id, round_key, receipt, privacy),
            sleep=self._sleep,
            clock=self._clock,
        )
        budget = self.settings.privacy_budget
        charge_restart = None
        if privacy is not None and budget is not None:
            charger = budget.restart_charger(self.state, run.run_id, privacy)

            def charge_restart(epoch: int) -> None:
                try:
                    charger(epoch)
                except BudgetExceeded as exc:  # the bank leaves the run, saying why
                    raise CannotTakePartError(str(exc)) from None
        runner = BankRunner(
            bank=self.bank_id, context=context, channel=channel, masks=self._mask_session(run, roster),
            participants=run.active, quorum=self.settings.quorum, on_round=ProgressLog(run, clock=self._clock),
            on_restart=charge_restart,
        )
        started, cpu_started = self._clock(), time.process_time()
        if privacy is not None and budget is not None:
            budget.charge(self.state, run.run_id, privacy)
        history, pooled_days = None, 0
        if preparation.terminals is not None:
            assert self.terminal_history is not None
            history, pooled_days = pool_terminals(runner, run, preparation.terminals, self.terminal_history)
            rows = rows.with_consortium_terminals(history, secret=preparation.terminals.key)
        prepared = prepare_run(run.model, run.params, rows, party_index=run.party_index(self.bank_id),
                               n_parties=len(run.active))
        model = runner.run(prepared.algorithm)
        body = prepared.serialize(model)
        digest = prepared.digest(body)
        assessment = self._assess(run, window, runner, model, digest, preparation, history)
        document = None if assessment is None else assessment.to_bytes()
        if assessment is not None and document is not None:  # (document is for mypy)
            self.client.put_assessment(run.run_id, document,
                                       signature=self.identity.sign_assessment(run.run_id, document))
            log.info("run %s: candidate AUC %.4f AP %.4f against %s: %s", run.run_id, assessment.candidate["auc"],
                     assessment.candidate["average_precision"],
                     "no current model" if assessment.baseline is None else
                     f"v{assessment.baseline_version} AUC {assessment.baseline['auc']:.4f}",
                     "promote" if assessment.promote else "keep the current model")
        if privacy is not None:  # every epoch's spend was recorded as spent, whatever the answers were
            self.ledger.require_privacy(run.run_id, channel.epochs_sent)
        try:
            self.client.post_proposal(run.run_id, body, signature=self.identity.sign_proposal(run.run_id, body))
        except ConflictError as exc:
            log.info("run %s: proposal already recorded by the consortium (%s)", run.run_id, exc.message)
        # Where the rounds' time went: the node's own work, and waiting for the other banks and the
        # consortium (uploads, sums, notes); what an operator asks of a slow night.
        ledger = runner.ledger
        spent = {"compute": round(ledger.compute_s, 3), "encrypt": round(ledger.encrypt_s, 3),
                 "decrypt": round(ledger.decrypt_s, 3), "wait": round(ledger.wait_s, 3)}
        self.state.update_run(
            run.run_id,
            {
                "status": PROPOSED,
                "model": run.model,
                "digest": digest,
                "assessment": None if document is None else json.loads(document),
                "rounds": runner.ledger.rounds,
                "replayed_rounds": channel.stats.replayed,
                "terminal_days": 0 if history is None else len(history.days),
                "terminal_days_pooled": pooled_days,
                "seconds": round(self._clock() - started, 3),
                "seconds_in_rounds": spent,
                # The node's processor time over the same span (its threads included): wall time
                # on a busy machine says little of what the run cost this node.
                "cpu_seconds": round(time.process_time() - cpu_started, 3),
            },
        )
        log.info(
            "run %s: proposed %s model sha256=%s after %d rounds (%d replayed); in the rounds, %.1f s of "
            "this node's own work (compute %.1f, mask and encrypt %.1f, decrypt %.1f) and %.1f s waiting "
            "for the consortium",
            run.run_id, run.model, digest[:16], ledger.rounds, channel.stats.replayed,
            spent["compute"] + spent["encrypt"] + spent["decrypt"], spent["compute"], spent["encrypt"],
            spent["decrypt"], spent["wait"],
        )
        return RunOutcome(run.run_id, PROPOSED, f"proposed {run.model} model", digest)

    def _assess(self, run: RunInfo, window: RunWindow | None, runner: BankRunner, model: Any, digest: str,
                preparation: _Preparation, history: ConsortiumHistory | None) -> Assessment | None:
        """The gate: pooled metrics of the candidate and the run's baseline on the validation days,
        from one more secure sum with the same banks (None without validation days; the first model
        of a family gets its own metrics only).

        Each model scores the rows built as it was trained: with consortium terminal features
        if its file says so (the baseline's file is signed by the quorum, so the aggregator
        cannot change what it says)."""
        if window is None or window.validation_days == 0:
            return None
        validation = self.training_rows(RunWindow(
            as_of=window.as_of, train_days=window.validation_days, validation_days=0,
            label_delay_days=window.label_delay_days))
        terminals = preparation.terminals

        privacy = run_privacy(run.model, run.params)
        n_bins = DEFAULT_BINS if privacy is None else PRIVATE_BINS

        featured: dict[int, Rows] = {}  # the rows with consortium features, per threshold: built once

        def histogram(score: Callable[[Any], Any], features: FeatureSettings) -> Any:
            if not features.consortium:
                return validation.score_histogram(score, n_bins)
            if terminals is None or history is None:
                raise CannotTakePartError(
                    f"the baseline model {run.baseline_version} uses consortium terminal features, which this "
                    "run does not pool: open the run with consortium_features")
            if features.threshold not in featured:
                pooled = replace(history, threshold=features.threshold)
                featured[features.threshold] = validation.with_consortium_terminals(pooled, secret=terminals.key)
            return featured[features.threshold].score_histogram(score, n_bins)

        histograms = [histogram(_scorer(model), terminals.settings if terminals is not None else FeatureSettings())]
        if preparation.baseline is not None:
            histograms.append(histogram(*preparation.baseline))

        def evaluation() -> Any:  # fresh noise at every start: a restarted gate releases new sums
            if privacy is None:
                return pooled_evaluation(histograms)
            return pooled_evaluation(histograms, noise=PrivateContribution(privacy).gate_noisy)

        metrics = [
            {"auc": m.auc, "average_precision": m.average_precision, "rows": m.rows, "frauds": m.frauds}
            for m in runner.run(evaluation)
        ]
        return Assessment(run_id=run.run_id, model_digest=digest, baseline_version=run.baseline_version,
                          tolerance=float(run.promotion_tolerance or 0.0), candidate=metrics[0],
                          baseline=metrics[1] if len(metrics) > 1 else None)

    def _baseline_scorer(self, run: RunInfo) -> tuple[Callable[[Any], Any], FeatureSettings]:
        """The run's baseline model, downloaded and checked: the digest the consortium lists, and
        signatures of at least this bank's quorum of pinned members."""
        version = str(run.baseline_version)
        try:
            info = self.client.get_model(version)
        except NotFoundError:
            raise CannotTakePartError(f"the run's baseline model version {version} is not published") from None
        try:
            body, _ = self._fetch(info)
        except ConsortiumError as exc:
            if exc.retryable:
                raise
            raise CannotTakePartError(f"baseline model {version}: {exc}") from None
        signers = self._pinned_signers(info.run_id, info, body)
        if len(signers) < self.settings.quorum:
            raise CannotTakePartError(
                f"baseline model {version} is signed by {len(signers)} pinned members; this bank requires "
                f"{self.settings.quorum}")
        if info.model and info.model != run.model:
            raise CannotTakePartError(f"baseline model {version} is a {info.model} model; this run trains {run.model}")
        try:
            features = FeatureSettings.of_model_file(body)
            if run.model == "xgboost":
                return _scorer(from_xgboost_json(json.loads(body))), features
            return _scorer(LogRegModel.from_json(body.decode())), features
        except (ValueError, KeyError, TypeError, IndexError) as exc:  # whatever the file holds, it is said
            raise CannotTakePartError(f"baseline model {version} is not a usable {run.model} model: "
                                      f"{type(exc).__name__}: {exc}") from None

    def _pinned_signers(self, run_id: str, info: ModelInfo, body: bytes) -> set[str]:
        pinned = load_pinned(self.state)
        keys = pinned.roster.signing_keys() if pinned else {}
        signers = set()
        for bank_id, signature in info.proposals.items():
            if bank_id not in keys:
                continue
            try:
                verify(keys[bank_id], proposal_message(run_id, bank_id, body), signature)
            except SignatureError:
                continue
            signers.add(bank_id)
        return signers

    def _mask_session(self, run: RunInfo, roster: Roster) -> MaskSession:
        """This bank's masks for the run: agreed with the participants' *pinned* box keys, and a
        self-mask secret kept in the state directory so that a restarted agent masks as it did."""
        peers = {}
        box_keys = roster.box_keys()
        for bank_id in run.participants:
            if bank_id == self.bank_id:
                continue
            try:
                peers[bank_id] = b64decode_key(box_keys.get(bank_id, ""), what=f"{bank_id}'s box key")
            except SignatureError as exc:
                raise CeremonyError(f"run {run.run_id}: cannot agree masks with {bank_id}: {exc}") from None
        record = self.state.run_record(run.run_id) or {}
        secret_hex = record.get("mask_secret")
        if not secret_hex:
            secret_hex = secrets.token_hex(32)
            self.state.update_run(run.run_id, {"mask_secret": secret_hex})
        return MaskSession(bank_id=self.bank_id, box_key=self.identity.keys.box, peers=peers, run_id=run.run_id,
                           self_secret=bytes.fromhex(secret_hex))

    def _round_wait_s(self, run: RunInfo) -> float:
        if self.settings.round_wait_s is not None:
            return self.settings.round_wait_s
        return run.round_timeout_s + self.settings.round_wait_margin_s

    def _withdraw(self, run: RunInfo, reason: str) -> RunOutcome:
        log.error("run %s: cannot take part, withdrawing: %s", run.run_id, reason)
        try:
            self.client.withdraw(run.run_id, reason)
        except ConsortiumError as exc:
            if exc.retryable:
                return RunOutcome(run.run_id, RETRY, f"could not tell the consortium: {exc}")
            log.warning("run %s: the consortium did not take the withdrawal: %s", run.run_id, exc)
        return self._record_failure(run, reason)

    def _record_failure(self, run: RunInfo, reason: str) -> RunOutcome:
        log.error("run %s: failed: %s", run.run_id, reason)
        self.state.update_run(run.run_id, {"status": FAILED, "model": run.model, "reason": reason})
        return RunOutcome(run.run_id, FAILED, reason)

    # ------------------------------------------------------------------------- models

    def sync_models(self) -> list[Path]:
        """Download the published models of runs this bank proposed to; note runs that failed."""
        waiting = {run_id: r for run_id, r in self.state.runs().items() if r.get("status") == PROPOSED}
        if not waiting:
            return []
        published = {m.run_id: m for m in self.client.list_models()}
        saved = []
        for run_id, record in waiting.items():
            # One model that cannot be fetched now must not hold up the others (nor lose the
            # outcomes of the runs just taken part in): it is tried again on the next poll.
            try:
                info = published.get(run_id)
                if info is None:
                    self._note_failed_run(run_id)
                    continue
                path = self._download(run_id, record, info)
                if path is not None:
                    saved.append(path)
            except AuthError:
                raise
            except ConsortiumError as exc:
                log.warning("run %s: model not fetched yet: %s", run_id, exc)
        return saved

    def _fetch(self, info: ModelInfo) -> tuple[bytes, str]:
        """A published model's file and its sha256, which must be the digest the consortium lists.

        Raises
        ------
        ConsortiumError
            The bytes are not the listed model.
        """
        body = self.client.download_model(info.version)
        digest = hashlib.sha256(body).hexdigest()
        expected = info.digest.removeprefix("sha256:")
        if expected and digest != expected:
            raise ConsortiumError(
                f"model {info.version} downloaded with sha256 {digest}, but the consortium lists {expected}"
            )
        return body, digest

    def _download(self, run_id: str, record: dict[str, Any], info: ModelInfo) -> Path | None:
        body, digest = self._fetch(info)
        problem = self._model_problem(run_id, record, info, body, digest)
        if problem:
            # Never served: a model this bank did not compute, or that no quorum of pinned
            # members signed, is not the consortium's model whatever the aggregator says.
            log.error("run %s: published model %s refused: %s", run_id, info.version, problem)
            self.state.update_run(run_id, {"status": REFUSED, "version": info.version, "reason": problem})
            return None
        path = self.state.save_model(info.version, str(record["model"]), body)
        self.state.update_run(
            run_id,
            {"status": PUBLISHED, "version": info.version, "model_file": str(path), "matches_proposal": True,
             "signed_by": sorted(info.proposals), "promoted": self._promoted(record, info)},
        )
        log.info("run %s: published model %s saved to %s", run_id, info.version, path)
        return path

    def _promoted(self, record: dict[str, Any], info: ModelInfo) -> bool:
        """Whether this bank counts a published model as promoted: by its own signed assessment
        when it made one (the aggregator's word is not enough to get a model served), else by
        the consortium's status, and only as the family's first model (an ungated model never
        replaces one this bank serves)."""
        own = record.get("assessment")
        if own:
            return bool(own.get("promote"))
        return info.status == "promoted" and self.state.served_model(info.model or str(record.get("model"))) is None

    def _model_problem(self, run_id: str, record: dict[str, Any], info: ModelInfo, body: bytes, digest: str) -> str:
        """Why a published model must not be used, or "" if it is this bank's own proposal and a
        quorum of pinned members signed those very bytes, published as its run's family under a
        version this node keeps no other model as (the file it is saved to is named by both: a
        name already used would overwrite a model the node verified, perhaps the one it serves)."""
        if info.model and info.model != record.get("model"):
            return f"published as a {info.model} model; this bank proposed it in a run of {record.get('model')}"
        other = next((other_id for other_id, other in self.state.runs().items()
                      if other_id != run_id and other.get("status") == PUBLISHED
                      and str(other.get("version")) == str(info.version)), None)
        if other is not None:
            return f"version {info.version} is already this node's model of run {other}; a version names one model"
        if digest != record.get("digest"):
            return f"its sha256 {digest[:16]} differs from the model this bank proposed ({str(record.get('digest'))[:16]})"
        signers = self._pinned_signers(run_id, info, body)
        if len(signers) < self.settings.quorum:
            return (
                f"only {len(signers)} pinned members signed it ({', '.join(sorted(signers)) or 'none'}); "
                f"this bank requires {self.settings.quorum}"
            )
        return ""

    def _note_failed_run(self, run_id: str) -> None:
        run = self.client.get_run(run_id)
        if run.state == "failed":
            self._record_failure(run, run.failure_reason or "the run failed after this bank proposed")
