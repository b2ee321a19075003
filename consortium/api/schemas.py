"""Marshmallow schemas of the aggregator's JSON bodies: the one validation layer of the API."""

from __future__ import annotations

from collections import Counter
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from schemas.errors import FedfraudInputError
from schemas.ledger import EVENTS as LEDGER_EVENTS
from schemas.ledger import MAX_PROOFS_A_REQUEST
from schemas.run import MODEL_FAMILIES, RunWindowSchema, load_run_params
from consortium.secure_sum import MIN_BANKS
from consortium.storage.models import ID_SEGMENT

#: As OpenAPI documents it (ECMA-262: "$" is the end); checked whole by :class:`Whole`.
ID_REGEX = rf"^{ID_SEGMENT}$"
TIMESTAMP = "%Y-%m-%dT%H:%M:%S.%fZ"
MAX_ROUND_TIMEOUT_S = 7 * 24 * 3600


class Whole(validate.Regexp):
    """A pattern the whole value must match: Python's "$" also matches before a final newline,
    so ``bank-9\n`` would pass ``^[a-z0-9-]+$``. The pattern is documented as written."""

    def __call__(self, value: Any) -> Any:
        if self.regex.fullmatch(value) is None:
            raise ValidationError(self._format_error(value))
        return value


class JsonBool(fields.Boolean):
    """JSON ``true`` or ``false`` only (marshmallow's also takes 1, "yes", "on", ...)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


class StrictSchema(Schema):
    """Unknown fields are errors (marshmallow's default, stated)."""

    class Meta:
        unknown = "raise"


class UtcTimestamp(fields.DateTime):
    """A naive-UTC datetime written ``2026-01-02T03:04:05.123456Z`` (rounds take well under a second,
    so their times need the fraction); documented as OpenAPI ``date-time``
    (a custom ``format=`` string would be documented as ``"format": null``)."""

    def _serialize(self, value: Any, attr: Any, obj: Any, **kwargs: Any) -> str | None:
        return None if value is None else value.strftime(TIMESTAMP)


def _timestamp(**kwargs: Any) -> fields.DateTime:
    return UtcTimestamp(**kwargs)


class HealthSchema(Schema):
    status = fields.String(required=True)
    database = fields.String(required=True)


class BankEnrolSchema(StrictSchema):
    bank_id = fields.String(
        required=True,
        validate=Whole(ID_REGEX, error="bank ids match {regex}"),
        metadata={"example": "bank-1"},
    )
    name = fields.String(
        required=True,
        validate=[
            validate.Length(min=1, max=200),
            Whole(r"^[^\x00-\x1f\x7f]*$", error="names may not contain control characters"),
        ],
    )


class BankEnrolledSchema(Schema):
    bank_id = fields.String(required=True)
    name = fields.String(required=True)
    token = fields.String(required=True, metadata={"description": "bearer token of the bank; shown once"})


class BankSchema(Schema):
    bank_id = fields.String(required=True)
    name = fields.String(required=True)
    signing_key = fields.String(allow_none=True, metadata={"description": "Ed25519 public key, base64"})
    box_key = fields.String(allow_none=True, metadata={"description": "X25519 public key, base64"})
    enrolled_at = _timestamp()
    keys_registered_at = _timestamp(allow_none=True)


class BankKeysSchema(StrictSchema):
    signing_key = fields.String(required=True, validate=validate.Length(min=1, max=64))
    box_key = fields.String(required=True, validate=validate.Length(min=1, max=64))


class ContextPublishedSchema(Schema):
    scheme = fields.String(required=True)
    key_id = fields.String(required=True)
    digest = fields.String(required=True)
    size = fields.Integer(required=True)
    publisher = fields.String(required=True)
    published_at = _timestamp()
    generation = fields.Integer(required=True, metadata={"description": "1, then one more per key rotation"})
    roster_version = fields.Integer(required=True)
    roster_digest = fields.String(required=True)


class SharePostedSchema(Schema):
    bank_id = fields.String(required=True)
    key_id = fields.String(required=True)
    digest = fields.String(required=True)
    size = fields.Integer(required=True)
    posted_at = _timestamp()


class RosterSignatureSchema(Schema):
    bank_id = fields.String(required=True)
    signature = fields.String(required=True)


class RosterSchema(Schema):
    version = fields.Integer(required=True)
    digest = fields.String(required=True, metadata={"description": "SHA-256 hex of the document"})
    document = fields.String(required=True, metadata={"description": "the canonical JSON document, verbatim"})
    proposed_by = fields.String(required=True)
    proposed_at = _timestamp()
    signatures = fields.List(fields.Nested(RosterSignatureSchema), required=True)


class RosterQuerySchema(StrictSchema):
    since = fields.Integer(load_default=0, validate=validate.Range(min=0, max=2**31 - 1),
                           metadata={"description": "only versions newer than this"})


MAX_RUN_TIMEOUT_S = 7 * 24 * 3600
PARAMS_DOC = {
    "description": "the model family's parameters: XGBoostParams for xgboost, LogRegParams for logreg; "
                   "unknown names and out-of-range values are refused",
    "anyOf": [{"$ref": "#/components/schemas/XGBoostParams"}, {"$ref": "#/components/schemas/LogRegParams"}],
}


class RunOpenSchema(StrictSchema):
    model = fields.String(required=True, validate=validate.OneOf(MODEL_FAMILIES))
    params = fields.Dict(keys=fields.String(), load_default=dict, metadata=PARAMS_DOC)
    window = fields.Nested(RunWindowSchema, metadata={
        "description": "the days every bank trains and validates on; default: as_of today in the "
                       "consortium's time zone, with the configured numbers of days"})
    run_timeout_s = fields.Integer(strict=True, validate=validate.Range(min=60, max=MAX_RUN_TIMEOUT_S),
                                   metadata={"description": "deadline of the whole run; an open run past it fails"})
    min_banks = fields.Integer(strict=True,
        validate=validate.Range(min=MIN_BANKS, max=1000, error=f"min_banks must be from {MIN_BANKS} to 1000: with two banks either one subtracts itself from the sum"),
    )
    round_timeout_s = fields.Integer(strict=True, validate=validate.Range(min=1, max=MAX_ROUND_TIMEOUT_S))
    participants = fields.List(
        fields.String(validate=Whole(ID_REGEX)), validate=validate.Length(min=MIN_BANKS, max=1000)
    )

    @validates_schema
    def _params_fit_the_family(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("model") not in MODEL_FAMILIES:
            return  # the model field reports it
        try:
            data["params"] = load_run_params(data["model"], data.get("params") or {})
        except FedfraudInputError as exc:
            raise ValidationError({"params": exc.errors}) from None


class ScheduleChangeSchema(StrictSchema):
    cron = fields.String(validate=validate.Length(min=9, max=100),
                         metadata={"description": "5-field crontab line in the consortium's time zone, e.g. '0 2 * * *'"})
    enabled = JsonBool()
    params = fields.Dict(keys=fields.String(), metadata=PARAMS_DOC)
    train_days = fields.Integer(strict=True, validate=validate.Range(min=1, max=366))
    validation_days = fields.Integer(strict=True, validate=validate.Range(min=0, max=92))
    label_delay_days = fields.Integer(strict=True, validate=validate.Range(min=0, max=92))
    min_banks = fields.Integer(strict=True, allow_none=True, validate=validate.Range(min=MIN_BANKS, max=1000))
    run_timeout_s = fields.Integer(strict=True, allow_none=True, validate=validate.Range(min=60, max=MAX_RUN_TIMEOUT_S))


class ScheduleSchema(Schema):
    model = fields.String(required=True)
    cron = fields.String(required=True)
    time_zone = fields.String(required=True)
    enabled = fields.Boolean(required=True)
    params = fields.Dict()
    train_days = fields.Integer()
    validation_days = fields.Integer()
    label_delay_days = fields.Integer()
    min_banks = fields.Integer(allow_none=True)
    run_timeout_s = fields.Integer(allow_none=True)
    next_fire_at = _timestamp(allow_none=True, metadata={"description": "UTC"})
    next_fire_local = fields.String(allow_none=True, metadata={"description": "wall-clock time in time_zone"})
    last_fired_local = fields.String(allow_none=True)
    last_run_id = fields.String(allow_none=True)
    last_outcome = fields.String(allow_none=True)
    updated_at = _timestamp()


class AssessmentPostedSchema(Schema):
    run_id = fields.String(required=True)
    bank_id = fields.String(required=True)
    posted_at = _timestamp()


class CurrentModelSchema(Schema):
    family = fields.String(required=True)
    version = fields.Integer(required=True)
    since = _timestamp()
    reason = fields.String()


class MakeCurrentSchema(StrictSchema):
    reason = fields.String(load_default="", validate=validate.Length(max=500))


class RunCancelSchema(StrictSchema):
    reason = fields.String(load_default="", validate=validate.Length(max=500))


class RunWithdrawSchema(StrictSchema):
    reason = fields.String(required=True, validate=validate.Length(min=1, max=500),
                           metadata={"description": "why this bank cannot take part, for the operator"})


MAX_WAIT_S = 30


class WaitQuerySchema(StrictSchema):
    wait = fields.Float(load_default=0.0, validate=validate.Range(min=0, max=MAX_WAIT_S),
                        metadata={"description": f"long poll: seconds (at most {MAX_WAIT_S}) to wait for the round"})


_WITH_ROUNDS = fields.Boolean(
    load_default=True,
    metadata={"description": "false: each run and its progress without its rounds (a run has hundreds; what a "
                             "dashboard or script polling for the end of a run needs)"})


class RunViewQuerySchema(StrictSchema):
    rounds = _WITH_ROUNDS


class RunQuerySchema(StrictSchema):
    state = fields.String(validate=validate.OneOf(("open", "completed", "rejected", "failed", "cancelled")))
    rounds = _WITH_ROUNDS


class RoundSchema(Schema):
    round_key = fields.String(required=True)
    state = fields.String(required=True)
    n_values = fields.Integer(required=True)
    contributed = fields.Integer(required=True)
    contributors = fields.List(fields.String())
    participants = fields.Integer(required=True)
    dropped = fields.List(fields.String())
    opened_at = _timestamp()
    deadline = _timestamp()
    closed_at = _timestamp(allow_none=True)
    failure_reason = fields.String(allow_none=True)


class RunSchema(Schema):
    run_id = fields.String(required=True)
    model = fields.String(required=True)
    params = fields.Dict()
    min_banks = fields.Integer()
    round_timeout_s = fields.Integer()
    participants = fields.List(fields.String())
    window = fields.Dict(allow_none=True)
    deadline = _timestamp(allow_none=True)
    withdrawn = fields.Dict(keys=fields.String(), values=fields.String(),
                            metadata={"description": "banks that could not take part, with their reasons"})
    baseline_version = fields.Integer(allow_none=True, metadata={"description": "the current model when opened"})
    promotion_tolerance = fields.Float(allow_none=True)
    key_id = fields.String(allow_none=True, metadata={"description": "the HE key the run's ciphertexts use"})
    state = fields.String(required=True)
    failure_reason = fields.String(allow_none=True)
    created_at = _timestamp()
    finished_at = _timestamp(allow_none=True)
    progress = fields.Dict(metadata={"description": "phase, rounds released of expected (an upper bound), tree"})
    rounds = fields.List(fields.Nested(RoundSchema))
    model_version = fields.Integer(allow_none=True)


class ContributionStoredSchema(Schema):
    run_id = fields.String(required=True)
    round_key = fields.String(required=True)
    bank_id = fields.String(required=True)
    digest = fields.String(required=True)
    size = fields.Integer(required=True)
    state = fields.String(required=True, metadata={"description": "the round's state after this contribution"})
    contributed = fields.Integer(required=True)
    participants = fields.Integer(required=True)
    receipt = fields.Dict(required=True, metadata={"description": (
        "the ledger's receipt of this contribution: the entry, its index, an inclusion proof and the "
        "signed checkpoint (docs/ledger.md); with ?wait and a 200 answer, in the X-Fedfraud-Receipt header "
        "as base64 JSON")})
    privacy_receipt = fields.Dict(allow_none=True, metadata={"description": (
        "in a differentially private run, the receipt of the ledger entry recording this bank's privacy "
        "spend (privacy.spent) for the run's current epoch, so the bank checks the spend recorded in its "
        "name; with ?wait and a 200 answer, in the X-Fedfraud-Privacy-Receipt header")})


class NotePostedSchema(Schema):
    run_id = fields.String(required=True)
    round_key = fields.String(required=True)
    bank_id = fields.String(required=True)
    posted_at = _timestamp()


class NoteSchema(Schema):
    bank_id = fields.String(required=True)
    note = fields.String(required=True, metadata={"description": "the note, base64"})
    signature = fields.String(required=True, metadata={"description": "Ed25519 over fedfraud-note-v1, base64"})


class NotesSchema(Schema):
    round_key = fields.String(required=True)
    state = fields.String(required=True)
    summed = fields.List(fields.String(), metadata={"description": "banks whose contributions the sum adds"})
    notes = fields.List(fields.Nested(NoteSchema))


class RoundStatusSchema(Schema):
    state = fields.String(required=True)
    contributed = fields.Integer(required=True)
    participants = fields.Integer(required=True)


class ProposalOutcomeSchema(Schema):
    run_id = fields.String(required=True)
    bank_id = fields.String(required=True)
    digest = fields.String(required=True)
    state = fields.String(required=True, metadata={"description": "'waiting' or 'published'"})
    agreed = fields.Integer(required=True)
    required = fields.Integer(required=True)
    model_version = fields.Integer(allow_none=True)


class ModelSchema(Schema):
    version = fields.Integer(required=True)
    run_id = fields.String(required=True)
    family = fields.String(required=True)
    digest = fields.String(required=True)
    size = fields.Integer(required=True)
    created_at = _timestamp()
    banks = fields.List(fields.String())
    proposals = fields.List(
        fields.Dict(keys=fields.String(), values=fields.String()),
        metadata={"description": "each publishing bank's Ed25519 signature over fedfraud-proposal-v1 of the file"},
    )
    status = fields.String(metadata={"description": "promoted (it replaced the current model) or rejected"})
    current = fields.Boolean(metadata={"description": "whether its family serves it now"})
    assessment = fields.Dict(allow_none=True, metadata={"description": "pooled metrics against the baseline"})
    lineage = fields.Dict(metadata={"description": "run, window, rounds released, banks"})


MAX_INDEX = 2**31 - 1  # ledger indexes and model versions (a database integer)


class KeyRotationSchema(Schema):
    index = fields.Integer(required=True, metadata={"description": "the ledger.key_rotated entry's index"})
    entry = fields.String(required=True, metadata={"description": "the entry's exact text"})


class LedgerKeySchema(Schema):
    origin = fields.String(required=True)
    public_key = fields.String(required=True, metadata={"description": "base64 Ed25519 key that signs checkpoints "
                                                                        "now"})
    rotations = fields.List(fields.Nested(KeyRotationSchema), required=True, metadata={
        "description": "every rotation of the key, oldest first: a bank that pinned an earlier key follows them "
                       "(each endorsed by the key before it) with the log's proofs"})


class CheckpointSchema(Schema):
    origin = fields.String(required=True)
    size = fields.Integer(required=True)
    root = fields.String(required=True, metadata={"description": "base64 Merkle root (RFC 9162)"})
    timestamp_ms = fields.Integer(required=True)
    signature = fields.String(required=True)


class LedgerEntrySchema(Schema):
    index = fields.Integer(required=True)
    at = fields.String(required=True)
    event = fields.String(required=True)
    bank_id = fields.String(allow_none=True)
    run_id = fields.String(allow_none=True)
    model_version = fields.Integer(allow_none=True)
    details = fields.Dict(required=True)
    entry = fields.String(required=True, metadata={"description": "the signed entry's exact text"})
    checkpoint = fields.Nested(CheckpointSchema, required=True,
                               metadata={"description": "the signed checkpoint of the log up to this entry"})


class LedgerPageSchema(Schema):
    entries = fields.List(fields.Nested(LedgerEntrySchema), required=True)
    next_after = fields.Integer(allow_none=True, metadata={"description": "pass as ?after= for the next page"})
    total = fields.Integer(required=True, metadata={"description": "entries matching the filters"})


class LedgerQuerySchema(StrictSchema):
    bank_id = fields.String(validate=Whole(ID_REGEX, error="not a bank id"))
    event = fields.String(validate=validate.OneOf(sorted(LEDGER_EVENTS)))
    run_id = fields.String(validate=Whole(ID_REGEX, error="not a run id"))
    model_version = fields.Integer(validate=validate.Range(min=1, max=MAX_INDEX))
    since = fields.DateTime(metadata={"description": "entries at or after (ISO 8601; naive means UTC)"})
    until = fields.DateTime(metadata={"description": "entries before"})
    after = fields.Integer(load_default=-1, validate=validate.Range(min=-1, max=MAX_INDEX),
                           metadata={"description": "entries with a larger index (paging)"})
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))


class ExportQuerySchema(StrictSchema):
    format = fields.String(load_default="jsonl", validate=validate.OneOf(("jsonl", "csv")))


class InclusionQuerySchema(StrictSchema):
    index = fields.Integer(required=True, validate=validate.Range(min=0, max=MAX_INDEX))
    size = fields.Integer(validate=validate.Range(min=1, max=MAX_INDEX), metadata={"description": "default: the current size"})


def _each_once(values: list[int]) -> None:
    repeated = sorted(value for value, times in Counter(values).items() if times > 1)
    if repeated:
        raise ValidationError(f"listed more than once: {repeated[:10]}")


class InclusionBatchSchema(StrictSchema):
    indices = fields.List(
        fields.Integer(strict=True, validate=validate.Range(min=0, max=MAX_INDEX)), required=True,
        validate=[validate.Length(min=1, max=MAX_PROOFS_A_REQUEST), _each_once],
        metadata={"description": f"the entries to prove (1 to {MAX_PROOFS_A_REQUEST}, each once)"})
    size = fields.Integer(strict=True, validate=validate.Range(min=1, max=MAX_INDEX), metadata={"description": "default: the current size"})


class ConsistencyQuerySchema(StrictSchema):
    old = fields.Integer(required=True, validate=validate.Range(min=1, max=MAX_INDEX))
    new = fields.Integer(validate=validate.Range(min=1, max=MAX_INDEX), metadata={"description": "default: the current size"})


class ProofSchema(Schema):
    proof = fields.List(fields.String(), required=True, metadata={"description": "base64 hashes"})
    checkpoint = fields.Nested(CheckpointSchema, required=True,
                               metadata={"description": "the signed checkpoint of the tree the proof leads to"})
    index = fields.Integer()
    entry = fields.String()
    old = fields.Integer()


class IndexedProofSchema(Schema):
    index = fields.Integer(required=True)
    proof = fields.List(fields.String(), required=True, metadata={"description": "base64 hashes"})


class ProofBatchSchema(Schema):
    proofs = fields.List(fields.Nested(IndexedProofSchema), required=True,
                         metadata={"description": "one proof per index asked for, in the order asked"})
    checkpoint = fields.Nested(CheckpointSchema, required=True,
                               metadata={"description": "the signed checkpoint of the tree every proof leads to"})


class VerificationSchema(Schema):
    ok = fields.Boolean(required=True)
    size = fields.Integer(required=True)
    verified = fields.Integer(required=True)
    first_bad = fields.Integer(allow_none=True)
    problem = fields.String(allow_none=True)
    checkpoint = fields.Nested(CheckpointSchema, allow_none=True)


class BankSummarySchema(Schema):
    bank_id = fields.String(required=True)
    name = fields.String(required=True)
    runs_joined = fields.Integer(required=True)
    contributions = fields.Integer(required=True)
    bytes = fields.Integer(required=True)
    refusals = fields.Integer(required=True)
    withdrawals = fields.Integer(required=True)
    proposals = fields.Integer(required=True)
    last_seen = fields.String(allow_none=True)
    privacy_budget_spent = fields.Float(allow_none=True, metadata={"description": (
        "epsilon at delta 1e-5 of every differentially private run the bank contributed to, composed (Renyi DP, "
        "dp-accounting); null if it took part in none")})
    private_runs = fields.Integer(required=True, metadata={"description": "private runs the bank contributed to"})


class LineageContributionSchema(Schema):
    bank_id = fields.String(required=True)
    payload_sha256 = fields.String(required=True)
    payload_size = fields.Integer(required=True)
    received_at = _timestamp(required=True)
    ledger_index = fields.Integer(allow_none=True)


class LineageRoundSchema(Schema):
    round_key = fields.String(required=True)
    state = fields.String(required=True)
    n_addends = fields.Integer(allow_none=True)
    aggregate_sha256 = fields.String(allow_none=True)
    dropped = fields.List(fields.String(), required=True)
    contributions = fields.List(fields.Nested(LineageContributionSchema), required=True)


class LineageRunSchema(Schema):
    run_id = fields.String(required=True)
    state = fields.String(required=True)
    window = fields.Dict(allow_none=True)
    params = fields.Dict(required=True)
    participants = fields.List(fields.String(), required=True)
    withdrawn = fields.Dict(required=True)
    created_at = _timestamp(required=True)
    finished_at = _timestamp(allow_none=True)


class LineageSchema(Schema):
    version = fields.Integer(required=True)
    family = fields.String(required=True)
    model_sha256 = fields.String(required=True)
    status = fields.String(required=True)
    banks = fields.List(fields.String(), required=True)
    baseline_version = fields.Integer(allow_none=True)
    run = fields.Nested(LineageRunSchema, required=True)
    rounds = fields.List(fields.Nested(LineageRoundSchema), required=True)
    proposals = fields.List(fields.Dict(), required=True)
    ledger_entries = fields.List(fields.Integer(), required=True)
