"""The aggregator's side of the role-split test, run as its own Python process.

Usage: ``python aggregator_process.py WORKDIR``. WORKDIR holds ``public.ctx`` and the banks'
``bank-*.bin`` payloads and nothing else. The process sums the payloads into
``aggregate.bin`` and writes ``report.json``: what it could and could not do with the public
context alone.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from crypto.registry import load_context
from crypto.scheme import unframe, unpack_sections


def attempt(action: Callable[[], object]) -> str | None:
    """Run ``action``; return ``None`` if it succeeded, else the error as ``Type: message``."""
    try:
        action()
    except Exception as exc:  # the report must say exactly what failed, whatever it was
        return f"{type(exc).__name__}: {exc}"
    return None


def inspect_tenseal(public: bytes, payload: bytes) -> dict[str, Any]:
    """Load the raw TenSEAL context behind our framing and see what keys it holds."""
    import tenseal as ts  # type: ignore[import-untyped]

    context = ts.context_from(bytes(unpack_sections(unframe(public)[1])[1]))
    first_chunk = bytes(unpack_sections(unframe(payload)[1])[0])
    return {
        "is_private": context.is_private(),
        "has_secret_key": context.has_secret_key(),
        "has_relin_keys": context.has_relin_keys(),
        "has_galois_keys": context.has_galois_keys(),
        "raw_decrypt": attempt(lambda: ts.ckks_vector_from(context, first_chunk).decrypt()),
    }


def main(workdir: Path) -> None:
    files_seen = sorted(path.name for path in workdir.iterdir())
    public = (workdir / "public.ctx").read_bytes()
    payloads = [path.read_bytes() for path in sorted(workdir.glob("bank-*.bin"))]
    scheme = load_context(public, require_public=True)
    total = scheme.aggregate(payloads)
    (workdir / "aggregate.bin").write_bytes(total)
    report: dict[str, Any] = {
        "scheme": scheme.name,
        "key_id": scheme.key_id,
        "has_secret_key": scheme.has_secret_key,
        "payloads_summed": len(payloads),
        "files_seen": files_seen,
        "refusals": {
            "decrypt_aggregate": attempt(lambda: scheme.decrypt(total)),
            "decrypt_bank_payload": attempt(lambda: scheme.decrypt(payloads[0])),
            "export_secret_context": attempt(scheme.secret_context),
        },
    }
    if scheme.name == "ckks":
        report["tenseal"] = inspect_tenseal(public, payloads[0])
    (workdir / "report.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
