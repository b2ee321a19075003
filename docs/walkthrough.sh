#!/usr/bin/env bash
# A consortium of three banks on one machine, over real HTTP: the README's walk-through, runnable.
# Each bank would run its part on its own servers; here they are three folders under $WORK.
#   bash docs/walkthrough.sh                       (needs `fedfraud` on PATH: make demo, then .venv/bin)
#   WORK=/tmp/ff PORT=8090 bash docs/walkthrough.sh
set -euo pipefail
WORK=${WORK:-$(mktemp -d -t fedfraud-walkthrough-XXXX)}
PORT=${PORT:-8080}
URL=http://127.0.0.1:$PORT
BANKS="bank-1 bank-2 bank-3"
mkdir -p "$WORK"
echo "working in $WORK"

# --- the operator ------------------------------------------------------------------------------
# The database and the ciphertext store live where these say (SQLite here; PostgreSQL by URL).
export FEDFRAUD_DATABASE_URL="sqlite:///$WORK/consortium/consortium.db"
export FEDFRAUD_BLOB_DIR="$WORK/consortium/blobs"
mkdir -p "$WORK/consortium"
fedfraud consortium init-db
OPERATOR=$(fedfraud consortium create-token --role operator)      # printed once, stored hashed
for BANK in $BANKS; do                                           # one token per bank, printed once
    fedfraud consortium enrol-bank "$BANK" "Bank ${BANK#bank-}" > "$WORK/$BANK.token"
done
fedfraud consortium serve --port "$PORT" > "$WORK/consortium.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
until curl -sf "$URL/v1/health" > /dev/null; do sleep 0.5; done

# --- each bank: keys, the roster it signs, the HE key, its transactions -----------------------------
for BANK in $BANKS; do
    NODE="$WORK/$BANK"
    FEDFRAUD_BANK_TOKEN=$(cat "$WORK/$BANK.token") \
        fedfraud bank enrol --state-dir "$NODE" --url "$URL" --bank-id "$BANK"
    # Read out by phone to the other banks' staff, who type it in below (here: a file).
    fedfraud bank fingerprint --state-dir "$NODE" | cut -d' ' -f3- > "$WORK/$BANK.fingerprint"
done
members() {  # --member ID=FINGERPRINT for every bank but $1
    for OTHER in $BANKS; do
        [ "$OTHER" = "$1" ] || printf -- '--member\n%s=%s\n' "$OTHER" "$(cat "$WORK/$OTHER.fingerprint")"
    done
}
mapfile -t FIRST < <(members bank-1)
DIGEST=$(fedfraud bank roster propose --state-dir "$WORK/bank-1" "${FIRST[@]}" | sed -n 's/.*proposed: //p')
for BANK in bank-2 bank-3; do
    mapfile -t OTHERS < <(members "$BANK")
    fedfraud bank roster approve "$DIGEST" --state-dir "$WORK/$BANK" "${OTHERS[@]}"
done
fedfraud bank ceremony --state-dir "$WORK/bank-1" --generate --scheme ckks
for BANK in bank-2 bank-3; do
    fedfraud bank ceremony --state-dir "$WORK/$BANK" --wait 60
done
SEED=0
for BANK in $BANKS; do                     # each bank's own cards: a day's file a night, or weeks at once
    SEED=$((SEED + 1))
    fedfraud generate "$WORK/$BANK-transactions.parquet" --days 50 --customers 400 --terminals 800 --seed "$SEED"
    fedfraud bank ingest "$WORK/$BANK-transactions.parquet" --state-dir "$WORK/$BANK"
done

# --- the operator opens a run (the schedule opens one every night by itself) ----------------------
RUN=$(curl -sf -X POST -H "Authorization: Bearer $OPERATOR" -H "Content-Type: application/json" \
    -d '{"model": "xgboost", "params": {"n_trees": 20, "max_depth": 3},
         "window": {"as_of": "2018-05-20", "train_days": 7, "validation_days": 7, "label_delay_days": 7}}' \
    "$URL/v1/runs" | python -c 'import json, sys; print(json.load(sys.stdin)["run_id"])')
echo "run $RUN opened"

# --- each bank's agent takes part (run without --once, it keeps polling) ---------------------------
AGENTS=""
for BANK in $BANKS; do
    fedfraud bank agent --state-dir "$WORK/$BANK" --once > "$WORK/$BANK-agent.log" 2>&1 &
    AGENTS="$AGENTS $!"
done
for AGENT in $AGENTS; do wait "$AGENT"; done

# --- wait for the run, fetch the published model, use it -------------------------------------------
until [ "$(curl -sf -H "Authorization: Bearer $OPERATOR" "$URL/v1/runs/$RUN?rounds=false" \
        | python -c 'import json, sys; print(json.load(sys.stdin)["state"])')" != open ]; do sleep 1; done
VERSION=$(curl -sf -H "Authorization: Bearer $OPERATOR" "$URL/v1/runs/$RUN?rounds=false" \
    | python -c 'import json, sys; run = json.load(sys.stdin); print(run["model_version"] or sys.exit(run["failure_reason"]))')
curl -sf -H "Authorization: Bearer $OPERATOR" -o "$WORK/model.json" "$URL/v1/models/$VERSION/download"
echo "model version $VERSION saved to $WORK/model.json (each bank's agent keeps it too, at its next poll)"
python - "$WORK/model.json" "$WORK/bank-1-transactions.parquet" <<'PY'
import sys
import xgboost
from bank_node.data import load_transactions
from bank_node.features import MODEL_INPUTS, compute_features, model_matrix
model = xgboost.Booster()
model.load_model(sys.argv[1])
rows = compute_features(load_transactions(sys.argv[2]).frame, start="2018-05-19", end="2018-05-19")
scores = model.predict(xgboost.DMatrix(model_matrix(rows), feature_names=list(MODEL_INPUTS)))
print(f"scored {len(scores)} transactions of 2018-05-19; highest fraud probability {scores.max():.3f}")
PY

# --- bank-1's risk team scores an authorisation on bank-1's own node ---------------------------------
# The scoring service serves the promoted model that bank-1's agent verified and kept (production:
# gunicorn -c ops/gunicorn-scoring.conf.py); the transaction never leaves the bank.
# Its agent (run without --once, it does this at every poll) keeps the published model once it has
# checked that the model is its own proposal, signed by its quorum.
fedfraud bank agent --state-dir "$WORK/bank-1" --once >> "$WORK/bank-1-agent.log" 2>&1
SCORER=$(fedfraud bank create-token --role scorer --state-dir "$WORK/bank-1")      # printed once
SCORING_PORT=${SCORING_PORT:-$((PORT + 1))}
fedfraud bank serve --state-dir "$WORK/bank-1" --port "$SCORING_PORT" > "$WORK/bank-1-scoring.log" 2>&1 &
SCORING=$!
trap 'kill $SERVER $SCORING 2>/dev/null || true' EXIT
until curl -sf "http://127.0.0.1:$SCORING_PORT/v1/ready" > /dev/null; do sleep 0.5; done
curl -sf -H "Authorization: Bearer $SCORER" -H "Content-Type: application/json" \
    -d '{"transaction_id": 900000001, "timestamp": "2018-05-21T10:15:00", "customer_id": 42,
         "terminal_id": 7, "amount": 57.3}' \
    "http://127.0.0.1:$SCORING_PORT/v1/score"
echo

# --- the nightly schedule --------------------------------------------------------------------------
fedfraud consortium schedule set xgboost --cron '0 2 * * *' \
    --params '{"n_trees": 20, "max_depth": 3, "consortium_features": true}'
fedfraud consortium schedule show
