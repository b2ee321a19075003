"""Round keys name their length and the banks a restarted epoch leaves out; both sides agree."""

from __future__ import annotations

import pytest

from schemas.round_key import RoundKeyError, parse_round_key, round_label

RUN = ["bank-c", "bank-a", "bank-d", "bank-b"]


def test_a_first_epoch_key_names_its_length_and_expects_everyone() -> None:
    label = round_label("gbdt/tree-0/level-2", epoch=0, n_values=4097, participants=RUN, run_participants=RUN)
    assert label == "gbdt/tree-0/level-2/n4097"
    declared = parse_round_key(label)
    assert (declared.n_values, declared.epoch) == (4097, 0)
    assert declared.expected(RUN) == frozenset(RUN)


def test_a_restart_names_the_banks_it_leaves_out_by_their_sorted_place() -> None:
    remaining = {"bank-a", "bank-c"}
    label = round_label("gbdt/bins", epoch=2, n_values=9, participants=remaining, run_participants=RUN)
    assert label == "e2-x1.3/gbdt/bins/n9"  # bank-b and bank-d, 2nd and 4th in sorted order
    assert parse_round_key(label).expected(RUN) == frozenset(remaining)


@pytest.mark.parametrize("key", ["gbdt/bins", "e1x/gbdt/n", "gbdt/n0", "n12x"])
def test_keys_without_a_well_formed_length_declare_none(key: str) -> None:
    assert parse_round_key(key).n_values is None


def test_leaving_out_a_bank_the_run_does_not_have_is_an_error() -> None:
    with pytest.raises(RoundKeyError, match="#7"):
        parse_round_key("e1-x7/gbdt/bins/n9").expected(RUN)


def test_progress_shows_the_terminal_statistics_before_the_trees() -> None:
    from schemas.round_key import training_progress

    params = {"n_trees": 2, "max_depth": 2}
    pooling = ["terminals/plan/n40", "terminals/sizes/n3", "terminals/presence-sketch/n1024"]
    assert training_progress("xgboost", params, pooling)["phase"] == "terminal statistics"
    progress = training_progress("xgboost", params, [*pooling, "gbdt/bins/n10", "gbdt/tree-0/level-0/n8"])
    assert progress["phase"] == "trees" and progress["terminal_rounds"] == 3
    assert progress["rounds_expected"] == 1 + 2 * 2 + 3 and progress["rounds_released"] == 5
