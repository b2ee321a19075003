"""The aggregator sums with the public context only and can never decrypt.

The aggregation runs in a separate Python process that receives nothing but the public
context bytes and the banks' payloads; the bank (this process) decrypts what it returns.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from crypto.registry import SCHEMES, load_context
from crypto.scheme import HEScheme, MissingSecretKeyError, PayloadKind, read_header, unframe, unpack_sections

WORKER = Path(__file__).with_name("aggregator_process.py")
N_BANKS = 4


@pytest.mark.parametrize("name", SCHEMES)
def test_aggregation_in_a_process_holding_only_the_public_context(
    name: str,
    tmp_path: Path,
    rng: np.random.Generator,
    scheme_factory: Callable[..., HEScheme],
    assert_sum: Callable[[HEScheme, np.ndarray, list[np.ndarray]], None],
) -> None:
    bank = scheme_factory(name)
    public = bank.public_context()
    (tmp_path / "public.ctx").write_bytes(public)
    vectors = [rng.uniform(-1e5, 1e5, 2 * bank.slot_count + 7) for _ in range(N_BANKS)]
    for index, vector in enumerate(vectors):
        (tmp_path / f"bank-{index}.bin").write_bytes(bank.encrypt(vector))

    finished = subprocess.run(
        [sys.executable, str(WORKER), str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr

    report = json.loads((tmp_path / "report.json").read_text())
    assert report["files_seen"] == sorted(["public.ctx", *(f"bank-{i}.bin" for i in range(N_BANKS))])
    assert report["key_id"] == bank.key_id
    assert report["has_secret_key"] is False
    assert report["payloads_summed"] == N_BANKS
    for action, outcome in report["refusals"].items():
        assert outcome is not None, f"the aggregator managed to {action}"
        assert outcome.startswith(f"{MissingSecretKeyError.__name__}: "), outcome

    total = (tmp_path / "aggregate.bin").read_bytes()
    assert read_header(total).n_addends == N_BANKS
    assert_sum(bank, bank.decrypt(total), vectors)

    if name == "ckks":
        tenseal = report["tenseal"]
        assert not tenseal["is_private"] and not tenseal["has_secret_key"]
        assert not tenseal["has_relin_keys"] and not tenseal["has_galois_keys"]
        assert tenseal["raw_decrypt"] is not None and "secret" in tenseal["raw_decrypt"]


def test_public_ckks_context_holds_no_secret_key(scheme_factory: Callable[..., HEScheme]) -> None:
    import tenseal as ts  # type: ignore[import-untyped]

    bank = scheme_factory("ckks")
    public, secret = (
        ts.context_from(bytes(unpack_sections(unframe(data)[1])[1]))
        for data in (bank.public_context(), bank.secret_context())
    )
    assert secret.is_private() and secret.has_secret_key()
    assert not public.is_private() and not public.has_secret_key()
    assert public.has_public_key()


def test_public_paillier_context_holds_no_factors(scheme_factory: Callable[..., HEScheme]) -> None:
    bank = scheme_factory("paillier")
    public = bank.public_context()
    secret_sections = unpack_sections(unframe(bank.secret_context())[1])
    public_sections = unpack_sections(unframe(public)[1])
    assert len(secret_sections) == 4 and len(public_sections) == 2
    n = int.from_bytes(public_sections[1], "little")
    p, q = (int.from_bytes(section, "little") for section in secret_sections[2:])
    assert p * q == n
    for factor in (p, q):
        assert factor.to_bytes(128, "little").rstrip(b"\x00") not in public
        assert factor.to_bytes(128, "big").lstrip(b"\x00") not in public
        assert str(factor).encode() not in public


def test_plain_public_context_is_marked_public(scheme_factory: Callable[..., HEScheme]) -> None:
    bank = scheme_factory("plain")
    assert read_header(bank.public_context()).kind is PayloadKind.PUBLIC_CONTEXT
    assert read_header(bank.secret_context()).kind is PayloadKind.SECRET_CONTEXT
    assert not load_context(bank.public_context()).has_secret_key
