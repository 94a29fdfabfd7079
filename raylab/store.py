"""An output location: a local directory or an fsspec URL (``s3://``, ``gs://``, ``memory://``).

Every write is atomic: bytes go to a hidden temporary name first and are then
renamed into place, so a crash leaves the previous file or none, never half of
one. Reads of missing files raise :class:`FileNotFoundError`.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import fsspec

from .errors import InputError, OutputError


def is_url(location: str | Path) -> bool:
    return "://" in str(location)


@dataclass(frozen=True)
class Store:
    """Files under one location, addressed by relative names."""

    location: str

    @staticmethod
    def at(location: str | Path) -> "Store":
        loc = str(location).rstrip("/")
        if not is_url(loc):
            loc = str(Path(loc).resolve())
        return Store(loc)

    @property
    def local(self) -> bool:
        return not is_url(self.location)

    def path(self, name: str) -> str:
        """The full path or URL of ``name``; names may not climb out of the location."""
        if name.startswith("/") or ".." in Path(name).parts:
            raise InputError(f"{name!r}: a file name must stay inside the output location {self.location}")
        return f"{self.location}/{name}"

    def _fs(self) -> tuple[fsspec.AbstractFileSystem, str]:
        fs, root = fsspec.core.url_to_fs(self.location)
        return fs, root

    def makedirs(self) -> None:
        fs, root = self._fs()
        try:
            fs.makedirs(root, exist_ok=True)
        except OSError as e:
            raise OutputError(f"cannot create output location {self.location} ({e.strerror or e})") from None

    def exists(self, name: str) -> bool:
        self.path(name)
        fs, root = self._fs()
        return fs.exists(f"{root}/{name}")

    def read_bytes(self, name: str) -> bytes:
        self.path(name)
        fs, root = self._fs()
        with fs.open(f"{root}/{name}", "rb") as f:
            return f.read()

    def write_bytes(self, name: str, data: bytes) -> str:
        """Atomically write ``data`` as ``name``; returns its full path or URL."""
        target = self.path(name)
        fs, root = self._fs()
        final = f"{root}/{name}"
        parent = final.rsplit("/", 1)[0]
        tmp = f"{parent}/.{final.rsplit('/', 1)[1]}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            fs.makedirs(parent, exist_ok=True)
            with fs.open(tmp, "wb") as f:
                f.write(data)
            if self.local:
                os.replace(tmp, final)
            else:
                fs.mv(tmp, final)
        except OSError as e:
            try:
                fs.rm(tmp)
            except OSError:
                pass
            raise OutputError(f"cannot write {target} ({e.strerror or e})") from None
        return target

    def write_text(self, name: str, text: str) -> str:
        return self.write_bytes(name, text.encode())
