"""The content-addressed blob store: atomic writes, verified reads."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from consortium.storage.blobs import BlobCorruptError, BlobMissingError, BlobStore


def test_blobs_are_named_by_their_sha256_and_read_back(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    digest = store.put(b"ciphertext")
    assert digest == hashlib.sha256(b"ciphertext").hexdigest()
    assert (tmp_path / "blobs" / digest[:2] / digest).read_bytes() == b"ciphertext"
    assert store.get(digest) == b"ciphertext"
    assert store.put(b"ciphertext") == digest  # idempotent
    assert list(store.digests()) == [digest]


def test_a_damaged_file_is_reported_never_served(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    digest = store.put(b"ciphertext")
    (tmp_path / digest[:2] / digest).write_bytes(b"ciphertexT")
    with pytest.raises(BlobCorruptError):
        store.get(digest)


def test_missing_blobs_and_bad_names(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    with pytest.raises(BlobMissingError):
        store.get("0" * 64)
    with pytest.raises(ValueError):
        store.get("../../etc/passwd")
    assert store.delete("0" * 64) is False


def test_no_temporary_file_is_left_and_stale_ones_are_cleaned(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    digest = store.put(b"x" * 1000)
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [digest]
    stale = tmp_path / digest[:2] / ".incoming-abc"
    stale.write_bytes(b"half")
    # Another process may be writing it right now: a fresh temporary file is left alone.
    assert store.remove_stale_temporaries() == 0 and stale.exists()
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    assert store.remove_stale_temporaries() == 1
    assert list(store.digests()) == [digest]
