"""An output location: a local directory or an fsspec URL (``s3://``, ``gs://``, ``memory://``).

Every file raylab writes goes through here, and every write is atomic: bytes
go to a hidden temporary name first (``.<name>.<hex>.tmp``) and are renamed
into place once complete, so a crash leaves the previous file or none, never
half of one. A location that cannot be written (read-only, full, unreachable)
raises :class:`raylab.errors.OutputError` with one line naming the file. Reads
of missing files raise :class:`FileNotFoundError`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import fsspec

from .errors import InputError, OutputError


def is_url(location: str | Path) -> bool:
    return "://" in str(location)


def filesystem(location: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """fsspec's filesystem of ``location`` and the path in it; InputError naming the location when its protocol is
    unknown or the package for it is missing (``s3://`` without s3fs)."""
    try:
        return fsspec.core.url_to_fs(location)
    except (ValueError, ImportError) as e:
        raise InputError(f"{location}: cannot open this location ({e})") from None


def make_folder(fs: fsspec.AbstractFileSystem, path: str, shown: str) -> None:
    """Create the folder ``path`` (and its parents); OutputError naming ``shown`` when it cannot be one."""
    try:
        fs.makedirs(path, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"cannot create output location {shown}: a file of that name is in the way") from None
    except NotADirectoryError:
        raise OutputError(f"cannot create output location {shown}: a file is in the way of its path") from None
    except OSError as e:
        raise OutputError(f"cannot create output location {shown} ({e.strerror or e})") from None


@dataclass(frozen=True)
class Store:
    """Files under one location, addressed by relative names."""

    location: str

    @staticmethod
    def at(location: str | Path) -> "Store":
        text = str(location)
        loc = text.rstrip("/")
        if loc.endswith(":"):  # a bare ``scheme://`` keeps its slashes
            loc = text
        if not is_url(loc):
            loc = str(Path(loc).resolve())
        return Store(loc)

    @staticmethod
    def beside(path: str | Path) -> tuple["Store", str]:
        """The store of a file's folder and the file's name: ``Store.beside("runs/m.pt")`` -> (runs, "m.pt")."""
        text = str(path).rstrip("/")
        if is_url(text):
            parent, _, name = text.rpartition("/")
            return Store.at(parent), name
        p = Path(text)
        return Store.at(p.parent), p.name

    @property
    def local(self) -> bool:
        return not is_url(self.location)

    def path(self, name: str) -> str:
        """The full path or URL of ``name``; names may not climb out of the location."""
        if not name or name.startswith("/") or ".." in Path(name).parts:
            raise InputError(f"{name!r}: a file name must stay inside the output location {self.location}")
        return f"{self.location}{name}" if self.location.endswith("/") else f"{self.location}/{name}"

    def child(self, name: str) -> "Store":
        """The store of a sub-folder."""
        return Store(self.path(name))

    def _fs(self) -> tuple[fsspec.AbstractFileSystem, str]:
        return filesystem(self.location)

    def makedirs(self) -> None:
        fs, root = self._fs()
        make_folder(fs, root, self.location)

    def exists(self, name: str) -> bool:
        self.path(name)
        fs, root = self._fs()
        return fs.exists(f"{root}/{name}")

    def remove(self, name: str) -> bool:
        """Remove ``name`` if it exists; returns whether it did. OutputError naming it when it cannot be removed."""
        target = self.path(name)
        fs, root = self._fs()
        try:
            if not fs.exists(f"{root}/{name}"):
                return False
            fs.rm(f"{root}/{name}")
        except OSError as e:
            raise OutputError(f"cannot remove {target} ({e.strerror or e})") from None
        return True

    def read_bytes(self, name: str) -> bytes:
        self.path(name)
        fs, root = self._fs()
        with fs.open(f"{root}/{name}", "rb") as f:
            return f.read()

    def read_text(self, name: str) -> str:
        return self.read_bytes(name).decode("utf-8")

    @contextmanager
    def open_atomic(self, name: str) -> Iterator[IO[bytes]]:
        """A binary file to write ``name`` through, renamed into place when the block ends without an error.

        On an error the temporary file is removed and the previous ``name`` (if any) is left as it was; an
        ``OSError`` becomes an :class:`OutputError` naming the file.
        """
        target = self.path(name)
        fs, root = self._fs()
        final = f"{root}/{name}"
        parent, _, leaf = final.rpartition("/")
        tmp = f"{parent}/.{leaf}.{uuid.uuid4().hex[:8]}.tmp"
        make_folder(fs, parent, target.rpartition("/")[0])
        try:
            with fs.open(tmp, "wb") as f:
                yield f
            if self.local:
                os.replace(tmp, final)
            else:
                fs.mv(tmp, final)
        except BaseException as e:
            try:
                fs.rm(tmp)
            except (OSError, FileNotFoundError):
                pass
            if isinstance(e, OSError) and not isinstance(e, OutputError):
                raise OutputError(f"cannot write {target} ({e.strerror or e})") from None
            raise

    def write_bytes(self, name: str, data: bytes) -> str:
        """Atomically write ``data`` as ``name``; returns its full path or URL."""
        with self.open_atomic(name) as f:
            f.write(data)
        return self.path(name)

    def write_text(self, name: str, text: str) -> str:
        return self.write_bytes(name, text.encode())


def guard_resume(store: Store, name: str, identity: dict[str, object], *, what: str, hint: str) -> None:
    """Record what a resumable run is (``identity``) at its first start, and refuse a later start that differs.

    A long run (a sweep, the reproduction) resumes from what its output location holds; resuming it with other
    settings would mix two runs' results under one name. The refusal is one line naming the first fields that
    differ, e.g. ``sweep 'grid' was started with eps=[0.01, 0.02], now eps=[0.03]; ...``.
    """
    import json

    current = json.loads(json.dumps(identity, default=str))
    if store.exists(name):
        try:
            before = json.loads(store.read_text(name))
        except ValueError:
            raise InputError(f"{store.path(name)}: not readable JSON; remove it to start over") from None
        changed = [k for k in sorted(set(before) | set(current)) if before.get(k) != current.get(k)]
        if changed:
            diffs = ", ".join(f"{k}={before.get(k)!r} then, {current.get(k)!r} now" for k in changed[:3])
            raise InputError(f"{what} was started with other settings ({diffs}{' ...' if len(changed) > 3 else ''}); {hint}")
        return
    store.write_text(name, json.dumps(current, indent=2, sort_keys=True) + "\n")
