"""A content-addressed file store: every blob is named by the SHA-256 of its bytes.

Writes are atomic and durable: the bytes go to a temporary file in the target directory, which is
flushed and fsync'ed, renamed over the final name, and the directory is fsync'ed, so after
:meth:`BlobStore.put` returns the blob survives a crash and no reader ever sees half a file.
Reads check the digest, so a damaged file is reported, never served.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

__all__ = ["BlobCorruptError", "BlobError", "BlobMissingError", "BlobStore", "sha256_hex"]

_DIGEST: Final = re.compile(r"^[0-9a-f]{64}\Z")
_TEMP_PREFIX: Final = ".incoming-"


class BlobError(Exception):
    """A blob that cannot be read as asked."""


class BlobMissingError(BlobError):
    """No blob with that digest is stored."""


class BlobCorruptError(BlobError):
    """The stored file's bytes do not hash to its name."""


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of ``data``: a blob's name."""
    return hashlib.sha256(data).hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobStore:
    """Blobs under ``root/<first two hex digits>/<sha256 hex>``.

    Parameters
    ----------
    root
        Directory of the store; created when missing.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def _path(self, digest: str) -> Path:
        if not _DIGEST.match(digest):
            raise ValueError(f"not a SHA-256 hex digest: {digest!r}")
        return self.root / digest[:2] / digest

    def put(self, data: bytes) -> str:
        """Store ``data`` durably; return its digest. Storing the same bytes twice is a no-op."""
        digest = sha256_hex(data)
        final = self._path(digest)
        if final.is_file() and final.stat().st_size == len(data):
            return digest
        new_root = not self.root.is_dir()
        new_folder = not final.parent.is_dir()
        final.parent.mkdir(parents=True, exist_ok=True)
        if new_root:
            _fsync_dir(self.root.parent)
        handle, temp_name = tempfile.mkstemp(prefix=_TEMP_PREFIX, dir=final.parent)
        try:
            with os.fdopen(handle, "wb") as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temp_name, final)
        except BaseException:
            Path(temp_name).unlink(missing_ok=True)
            raise
        _fsync_dir(final.parent)
        if new_folder:  # the folder's own entry in the root
            _fsync_dir(self.root)
        return digest

    def get(self, digest: str) -> bytes:
        """The bytes of blob ``digest``.

        Raises
        ------
        BlobMissingError
            Nothing stored under that digest.
        BlobCorruptError
            The file no longer hashes to its name.
        """
        try:
            data = self._path(digest).read_bytes()
        except FileNotFoundError:
            raise BlobMissingError(f"blob {digest} is not stored") from None
        if sha256_hex(data) != digest:
            raise BlobCorruptError(f"blob {digest} is corrupted on disk: its SHA-256 does not match")
        return data

    @contextlib.contextmanager
    def mapped(self, digest: str, *, check: bool = True) -> Iterator[bytes | mmap.mmap]:
        """Blob ``digest`` mapped read-only into memory, checked against its name: a round's sum
        reads its contributions through such maps, so the process holds the pages it is reading
        (which the kernel may drop and read again), not every payload of the round at once.
        ``check=False`` skips the check, for a caller that has the same file checked elsewhere
        (the processes summing one round split the checks between them).

        Raises
        ------
        BlobMissingError, BlobCorruptError
            As :meth:`get`.
        """
        try:
            handle = self._path(digest).open("rb")
        except FileNotFoundError:
            raise BlobMissingError(f"blob {digest} is not stored") from None
        with handle:
            size = os.fstat(handle.fileno()).st_size
            if size == 0:  # an empty file cannot be mapped
                data: bytes | mmap.mmap = b""
            else:
                data = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
            try:
                if check and hashlib.sha256(data).hexdigest() != digest:
                    raise BlobCorruptError(f"blob {digest} is corrupted on disk: its SHA-256 does not match")
                yield data
            finally:
                if isinstance(data, mmap.mmap):
                    with contextlib.suppress(BufferError):  # a view still held: closed when collected
                        data.close()

    def exists(self, digest: str) -> bool:
        """Whether a blob named ``digest`` is stored (without reading it)."""
        return self._path(digest).is_file()

    def delete(self, digest: str) -> bool:
        """Remove blob ``digest``; return whether it was there. Not synced (deletions are the hot
        path of every released round): a deletion that a power loss undoes leaves one unreferenced
        file behind, a masked ciphertext nothing serves."""
        path = self._path(digest)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    def digests(self) -> Iterator[str]:
        """Names of every stored blob (temporary files excluded)."""
        if not self.root.is_dir():
            return
        for path in sorted(self.root.glob("??/*")):
            if _DIGEST.match(path.name):
                yield path.name

    def remove_stale_temporaries(self, *, older_than_s: float = 3600.0) -> int:
        """Delete temporary files left by a crash mid-write; return how many.

        Only files untouched for ``older_than_s`` go: every process (each gunicorn worker, each
        CLI command beside a live server) calls this at start-up, and must not delete a write
        another process has in flight.
        """
        removed = 0
        if self.root.is_dir():
            cutoff = time.time() - older_than_s
            for path in self.root.glob(f"??/{_TEMP_PREFIX}*"):
                with contextlib.suppress(FileNotFoundError):
                    if path.stat().st_mtime <= cutoff:
                        path.unlink()
                        removed += 1
        return removed
