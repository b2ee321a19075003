"""``fedfraud bank``: enrol, ceremony and ``agent --once`` against the fake consortium; readable errors."""

from __future__ import annotations

import threading
from pathlib import Path

import pandas as pd
from click.testing import CliRunner

from bank_node.agent.cli import bank_cli
from bank_node.agent.identity import load_identity
from bank_node.agent.runner import BankAgent
from bank_node.agent.state import StateDir
from bank_node.agent.training import training_rows
from tests.bank_node.agent.conftest import (
    BANK_IDS,
    FAST_RETRY,
    SETTINGS,
    TRAIN_DAYS,
    TRAIN_START,
    XGB_PARAMS,
)
from tests.bank_node.agent.fake_consortium import FakeConsortium


def invoke(args: list[str], **env: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(bank_cli, args, env=env)
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def test_enrol_ceremony_and_one_pass_of_the_agent(
    fake: FakeConsortium, url: str, tmp_path: Path, bank_transactions: dict[str, pd.DataFrame]
) -> None:
    states = {bank_id: tmp_path / bank_id for bank_id in BANK_IDS}
    for bank_id, state in states.items():
        token = fake.enrol(bank_id)
        code, out, _ = invoke(["enrol", "--state-dir", str(state), "--url", url, "--bank-id", bank_id],
                              FEDFRAUD_BANK_TOKEN=token)
        assert code == 0 and f"bank {bank_id} enrolled" in out and token not in out
    # Each bank's staff read their fingerprint out to the others over a channel they trust.
    fingerprints = {}
    for bank_id, state in states.items():
        code, out, _ = invoke(["fingerprint", "--state-dir", str(state)])
        assert code == 0 and out.startswith(bank_id)
        fingerprints[bank_id] = out.split(None, 1)[1].strip()

    def members(*bank_ids: str) -> list[str]:
        return [arg for b in bank_ids for arg in ("--member", f"{b}={fingerprints[b]}")]

    code, out, _ = invoke(["roster", "propose", "--state-dir", str(states["bank-1"]), *members("bank-2", "bank-3")])
    assert code == 0 and "roster version 1 proposed" in out and "not pinned yet" in out
    digest = out.split("proposed: ", 1)[1].split()[0]
    mistyped = fingerprints["bank-3"].replace(fingerprints["bank-3"][0], "0" if fingerprints["bank-3"][0] != "0" else "1", 1)
    code, out, err = invoke(["roster", "approve", digest[:12], "--state-dir", str(states["bank-2"]),
                             *members("bank-1"), "--member", f"bank-3={mistyped}"])
    assert code != 0 and "do not add it" in (out + err) and "Traceback" not in err
    for bank_id, others in (("bank-2", ("bank-1", "bank-3")), ("bank-3", ("bank-1", "bank-2"))):
        code, out, err = invoke(["roster", "approve", digest[:12], "--state-dir", str(states[bank_id]), *members(*others)])
        assert code == 0, out + err
    assert "roster version 1 pinned" in out
    code, out, _ = invoke(["roster", "show", "--state-dir", str(states["bank-1"])])
    assert code == 0 and "pinned roster version 1" in out and fingerprints["bank-3"] in out
    code, _, err = invoke(["ceremony", "--state-dir", str(states["bank-1"]), "--generate", "--scheme", "plain"])
    assert code == 2 and "--development" in err and "Traceback" not in err
    code, out, _ = invoke(["ceremony", "--state-dir", str(states["bank-1"]), "--generate", "--scheme", "plain",
                           "--development"])
    assert code == 0 and "shares posted to bank-2, bank-3" in out
    for bank_id in ("bank-2", "bank-3"):
        code, out, _ = invoke(["ceremony", "--state-dir", str(states[bank_id])])
        assert code == 0 and "received and stored" in out
    run_id = fake.open_run("xgboost", XGB_PARAMS)

    # Banks 2 and 3 run their agents elsewhere; bank 1 runs the command.
    def other_bank(bank_id: str) -> None:
        from bank_node.agent.client import ConsortiumClient

        state = StateDir(states[bank_id])
        client = ConsortiumClient(base_url=url, token=state.load_token(), retry=FAST_RETRY)
        rows = training_rows(bank_transactions[bank_id], train_start=TRAIN_START, train_days=TRAIN_DAYS)
        BankAgent(client=client, identity=load_identity(state, bank_id), state=state,
                  training_rows=lambda window: rows, settings=SETTINGS).run_once()

    others = [threading.Thread(target=other_bank, args=(b,)) for b in ("bank-2", "bank-3")]
    for thread in others:
        thread.start()
    data = tmp_path / "bank-1.parquet"
    bank_transactions["bank-1"].to_parquet(data)
    agent_args = ["agent", "--data", str(data), "--train-start", TRAIN_START.isoformat(),
                  "--train-days", str(TRAIN_DAYS), "--state-dir", str(states["bank-1"]), "--once",
                  "--without-ledger"]  # the fake consortium keeps none
    code, out, err = invoke(agent_args)  # a 'plain' key outside development mode: refused, nothing proposed
    assert code != 0 and "development" in (out + err) and "Traceback" not in err
    code, out, err = invoke([*agent_args, "--development"])
    assert "DEVELOPMENT MODE" in err
    for thread in others:
        thread.join(30)

    assert code == 0, err
    assert f"{run_id}: proposed: proposed xgboost model" in out
    assert "taking part" in err and fake.runs[run_id].state == "completed"


def test_commands_before_enrolment_say_what_to_do(tmp_path: Path) -> None:
    data = tmp_path / "tx.csv"
    data.write_text("x\n1\n")
    code, _, err = invoke(["ceremony", "--state-dir", str(tmp_path / "empty")])
    assert code == 2 and "run `fedfraud bank enrol` first" in err and "Traceback" not in err


def test_an_unreachable_consortium_is_one_line(tmp_path: Path) -> None:
    code, _, err = invoke(["--retry-attempts", "2", "enrol", "--state-dir", str(tmp_path / "s"),
                           "--url", "http://127.0.0.1:9",
                           "--bank-id", "bank-1"], FEDFRAUD_BANK_TOKEN="t")
    assert code == 1 and "cannot reach the consortium" in err and "Traceback" not in err
