"""The artifact store: one interface over fsspec (a local folder by default, or any fsspec URL such as s3://).

Every name that becomes a path goes through `safe_key` first: an allow-list (ASCII letters, digits, `.`, `_`,
`-`, `+`, `=`; segments joined by `/`; no segment starting with `.`) rather than a deny-list, so `../`, `..\\`,
`%2e%2e/`, double encoding, `#` and `?` fragments, absolute paths, `file://` and `~` never reach the
filesystem. On a local folder the resolved path is also checked to stay under the root (symlinks included).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import tarfile
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import fsspec

from shipyard.errors import InvalidRequest, PayloadTooLarge

__all__ = ["ArtifactInfo", "ArtifactStore", "UnsafePath", "safe_extract", "safe_key"]

_SEGMENT = re.compile(r"^[A-Za-z0-9_+=-][A-Za-z0-9._+=-]{0,254}$")
_CHUNK = 1024 * 1024


class UnsafePath(InvalidRequest):
    """A name that would escape the artifact store (or an archive's target folder)."""

    def __init__(self, name: object, why: str) -> None:
        super().__init__(f"Unsafe artifact path {str(name)[:200]!r}: {why}.", code="unsafe_path")


def safe_key(name: object) -> str:
    """`name` if it is a safe relative key; UnsafePath otherwise. Never decodes or normalises anything."""
    if not isinstance(name, str) or not name:
        raise UnsafePath(name, "expected a non-empty string")
    if len(name) > 1024:
        raise UnsafePath(name, "longer than 1024 characters")
    if name.startswith(("/", "\\", "~")) or re.match(r"^[A-Za-z]:", name) or "://" in name:
        raise UnsafePath(name, "absolute paths, drive letters and URLs are refused")
    for segment in name.split("/"):
        if segment in ("", ".", ".."):
            raise UnsafePath(name, "empty, '.' and '..' segments are refused")
        if not _SEGMENT.match(segment):
            raise UnsafePath(name, "only letters, digits and . _ - + = are allowed, and no segment may start with '.'")
    return name


@dataclass(frozen=True, slots=True)
class ArtifactInfo:
    key: str
    size: int
    sha256: str


class ArtifactStore:
    """Keys are safe relative paths under one root URL. Writes land under a temporary name and are then moved."""

    def __init__(self, root: str | Path, **storage_options: Any) -> None:
        url = str(root)
        self.fs, path = fsspec.core.url_to_fs(url, **storage_options)
        self.root = path.rstrip("/")
        self.url = url
        self.local = "file" in _protocols(self.fs)
        if self.local:
            Path(self.root).mkdir(parents=True, exist_ok=True)
            self.root = os.path.realpath(self.root)

    def path(self, key: str) -> str:
        """The backend path of a key, after the safety checks."""
        full = f"{self.root}/{safe_key(key)}"
        if self.local:
            real = os.path.realpath(full)
            if real != self.root and not real.startswith(self.root + os.sep):
                raise UnsafePath(key, "it resolves outside the artifact store")
        return full

    def put_bytes(self, key: str, data: bytes) -> ArtifactInfo:
        target = self.path(key)
        self._write(target, lambda out: out.write(data))
        return ArtifactInfo(key, len(data), hashlib.sha256(data).hexdigest())

    def put_file(self, key: str, source: str | Path) -> ArtifactInfo:
        """Copy a local file in, hashing it on the way."""
        target = self.path(key)
        digest, size = hashlib.sha256(), 0

        def copy(out: IO[bytes]) -> None:
            nonlocal size
            with open(source, "rb") as src:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)

        self._write(target, copy)
        return ArtifactInfo(key, size, digest.hexdigest())

    def _write(self, target: str, write: Any) -> None:
        parent = target.rsplit("/", 1)[0]
        temp = f"{parent}/.tmp-{uuid.uuid4().hex}"
        self.fs.makedirs(parent, exist_ok=True)
        try:
            with self.fs.open(temp, "wb") as out:
                write(out)
            if self.local:
                os.replace(temp, target)
            else:
                self.fs.mv(temp, target)
        finally:
            if self.fs.exists(temp):
                self.fs.rm(temp)

    def get_bytes(self, key: str) -> bytes:
        with self.fs.open(self.path(key), "rb") as src:
            return src.read()

    def open(self, key: str) -> IO[bytes]:
        return self.fs.open(self.path(key), "rb")

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self.path(key)))

    def list(self, prefix: str = "") -> list[str]:
        """Keys under a prefix (a folder key), sorted; temporary files are left out."""
        base = self.path(prefix) if prefix else self.root
        if not self.fs.exists(base):
            return []
        found = self.fs.find(base)
        keys = []
        for item in found:
            rel = item[len(self.root) :].lstrip("/") if item.startswith(self.root) else ""
            if rel and not rel.rsplit("/", 1)[-1].startswith(".tmp-"):
                keys.append(rel)
        return sorted(keys)

    def delete(self, key: str) -> None:
        target = self.path(key)
        if self.fs.exists(target):
            self.fs.rm(target, recursive=True)

    def sha256(self, key: str) -> str:
        digest = hashlib.sha256()
        with self.open(key) as src:
            while chunk := src.read(_CHUNK):
                digest.update(chunk)
        return digest.hexdigest()


def _protocols(fs: Any) -> tuple[str, ...]:
    proto = fs.protocol
    return (proto,) if isinstance(proto, str) else tuple(proto)


# --- archives -----------------------------------------------------------------------------------------------------


def _members(archive: Path) -> Iterator[tuple[str, int, Any]]:
    """(name, declared size, opener) for each regular file; links, devices and other oddities are refused."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    raise UnsafePath(info.filename, "links inside archives are refused")
                if info.is_dir():
                    safe_key(info.filename.rstrip("/"))
                    continue
                yield info.filename, info.file_size, (lambda i=info: zf.open(i))
        return
    if not tarfile.is_tarfile(archive):
        raise InvalidRequest(f"{archive.name} is neither a zip nor a tar archive.", code="unsupported_archive")
    with tarfile.open(archive) as tf:
        for member in tf:
            if member.isdir():
                safe_key(member.name.rstrip("/"))
                continue
            if not member.isfile():
                raise UnsafePath(member.name, "only regular files and folders may be unpacked (no links or devices)")
            yield member.name, member.size, (lambda m=member: tf.extractfile(m))


def safe_extract(
    archive: str | Path, dest: str | Path, *, max_bytes: int = 20 * 1024**3, max_files: int = 100_000
) -> int:
    """Unpack a zip or tar archive into a new folder `dest`: every member name is a safe key, nothing but regular
    files and folders, at most `max_files` files and `max_bytes` bytes (counted while copying, not trusted from the
    headers). On any refusal nothing is left at `dest`. Returns the bytes written."""
    archive, dest = Path(archive), Path(dest)
    if dest.exists():
        raise InvalidRequest(f"{dest} already exists.", code="destination_exists")
    staging = dest.parent / f".unpack-{uuid.uuid4().hex}"
    staging.mkdir(parents=True)
    total = files = 0
    try:
        for name, declared, opener in _members(archive):
            target = staging / safe_key(name)
            files += 1
            if files > max_files:
                raise PayloadTooLarge(f"The archive has more than {max_files} files.", code="archive_too_large")
            if total + declared > max_bytes:
                raise PayloadTooLarge(f"The archive unpacks to more than {max_bytes} bytes.", code="archive_too_large")
            target.parent.mkdir(parents=True, exist_ok=True)
            with opener() as src, open(target, "xb") as out:
                while chunk := src.read(_CHUNK):
                    total += len(chunk)
                    if total > max_bytes:
                        raise PayloadTooLarge(
                            f"The archive unpacks to more than {max_bytes} bytes.", code="archive_too_large"
                        )
                    out.write(chunk)
        staging.rename(dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return total
