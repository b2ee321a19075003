"""The promotion gate's document: how a run's candidate model compares with the current one.

Every bank computes the same pooled metrics from the same decrypted score histograms
(``bank_node/federated/evaluation.py``), so every honest bank writes the same canonical document;
the consortium publishes a model only with the identical, signed assessments of the banks that
agree on it, and promotes it only if the document says so. The rule, the same on both sides::

    promote  <=>  there is no current model, or  candidate AUC >= current AUC - tolerance

Signatures cover ``fedfraud-assessment-v1\\n{run_id}\\n{bank_id}\\n{sha256 hex of the document}``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["ASSESSMENT_FORMAT", "Assessment", "AssessmentError", "assessment_message", "should_promote"]

ASSESSMENT_FORMAT: Final = "fedfraud-assessment-v1"
_METRICS: Final = ("auc", "average_precision", "rows", "frauds")


class AssessmentError(ValueError):
    """A document that is not a valid assessment; the message says what is wrong."""


def should_promote(candidate: Mapping[str, Any], baseline: Mapping[str, Any] | None, tolerance: float) -> bool:
    """The gate: promote unless the candidate's AUC is worse than the current model's by more than
    ``tolerance``."""
    return baseline is None or float(candidate["auc"]) >= float(baseline["auc"]) - tolerance


def assessment_message(run_id: str, bank_id: str, document: bytes) -> bytes:
    """The bytes a bank signs over its assessment."""
    return f"{ASSESSMENT_FORMAT}\n{run_id}\n{bank_id}\n{hashlib.sha256(document).hexdigest()}".encode()


def _metrics(value: Any, what: str) -> dict[str, float | int]:
    if not isinstance(value, Mapping) or set(value) != set(_METRICS):
        raise AssessmentError(f"{what} holds {', '.join(_METRICS)}")
    out: dict[str, float | int] = {}
    for name in ("auc", "average_precision"):
        number = value[name]
        if isinstance(number, bool) or not isinstance(number, int | float) or not math.isfinite(number) \
                or not 0 <= number <= 1:
            raise AssessmentError(f"{what}.{name} is a number in [0, 1]")
        out[name] = float(number)
    for name in ("rows", "frauds"):
        count = value[name]
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise AssessmentError(f"{what}.{name} is a non-negative integer")
        out[name] = count
    return out


@dataclass(frozen=True)
class Assessment:
    """A candidate's metrics against the current model's, on a run's validation days."""

    run_id: str
    model_digest: str
    baseline_version: int | None
    tolerance: float
    candidate: Mapping[str, float | int]
    baseline: Mapping[str, float | int] | None

    @property
    def promote(self) -> bool:
        """The gate's decision (:func:`should_promote`)."""
        return should_promote(self.candidate, self.baseline, self.tolerance)

    def to_bytes(self) -> bytes:
        """The canonical JSON document (the same bytes on every honest bank)."""
        document = {
            "format": ASSESSMENT_FORMAT, "run_id": self.run_id, "model_digest": self.model_digest,
            "baseline_version": self.baseline_version, "tolerance": self.tolerance,
            "candidate": dict(self.candidate), "baseline": None if self.baseline is None else dict(self.baseline),
            "promote": self.promote,
        }
        return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Assessment:
        """Parse and check a document (canonical form, consistent decision).

        Raises
        ------
        AssessmentError
            Not JSON, a missing or malformed field, a decision that contradicts the metrics, or
            not canonical.
        """
        try:
            document = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise AssessmentError("an assessment is a JSON document") from None
        if not isinstance(document, dict) or document.get("format") != ASSESSMENT_FORMAT:
            raise AssessmentError(f"not an assessment: expected format {ASSESSMENT_FORMAT!r}")
        try:
            baseline_version = document["baseline_version"]
            tolerance = document["tolerance"]
            if baseline_version is not None and (isinstance(baseline_version, bool) or not isinstance(baseline_version, int)):
                raise AssessmentError("baseline_version is a model version or null")
            if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) or not 0 <= tolerance <= 1:
                raise AssessmentError("tolerance is a number in [0, 1]")
            assessment = cls(
                run_id=str(document["run_id"]), model_digest=str(document["model_digest"]),
                baseline_version=baseline_version, tolerance=float(tolerance),
                candidate=_metrics(document["candidate"], "candidate"),
                baseline=None if document["baseline"] is None else _metrics(document["baseline"], "baseline"),
            )
            claimed = document["promote"]
        except KeyError as exc:
            raise AssessmentError(f"an assessment has {exc.args[0]!r}") from None
        if claimed is not assessment.promote:
            raise AssessmentError("the document's decision contradicts its metrics")
        if (baseline_version is None) != (assessment.baseline is None):
            raise AssessmentError("baseline metrics go with a baseline version, and only then")
        if assessment.to_bytes() != data:
            raise AssessmentError("the assessment is not in canonical form (sorted keys, no spaces)")
        return assessment
