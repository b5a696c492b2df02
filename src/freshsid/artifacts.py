"""Artifacts: a folder of plain files plus a ``manifest.json`` that describes them.

Every pipeline stage writes one artifact and reads the manifests of its inputs.
A manifest records the kind, schema version, config, seed, input fingerprints,
compute spent and the parent artifact, plus a SHA-256 for each file so that a
corrupted or hand-edited artifact is refused on read.

Writes are atomic: the folder is built under a temporary sibling name and renamed
into place only when complete, so a crash never leaves a half-written artifact.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import glob
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from freshsid.errors import FreshsidError

MANIFEST = "manifest.json"
_UMASK = os.umask(0)
os.umask(_UMASK)
SCHEMA_VERSION = 2  # 2: the manifest carries its own digest; file names are plain
READABLE_VERSIONS = (1, 2)


class Manifest(BaseModel):
    """What an artifact folder holds and how it was made."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str
    schema_version: int = SCHEMA_VERSION
    config: dict[str, Any] = Field(default_factory=dict)
    seed: int | None = None
    inputs: dict[str, str] = Field(default_factory=dict)  # name -> fingerprint
    compute: dict[str, float] = Field(default_factory=dict)
    parent: str | None = None  # fingerprint of the artifact this one derives from
    files: dict[str, str] = Field(default_factory=dict)  # file name -> sha256
    info: dict[str, Any] = Field(default_factory=dict)  # free-form summary numbers
    created: float = Field(default_factory=time.time)
    digest: str = ""  # SHA-256 of every other field: an edited config or info is refused

    @property
    def expected_digest(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(mode="json", exclude={"digest"}), sort_keys=True,
                                         default=str).encode()).hexdigest()

    @property
    def fingerprint(self) -> str:
        """A stable id of the content: hash of kind, config and file hashes (not the time)."""
        payload = {"kind": self.kind, "config": self.config, "files": self.files, "seed": self.seed}
        return fingerprint_of(payload)


def fingerprint_of(obj: Any) -> str:
    """SHA-256 (first 16 hex digits) of an object's canonical JSON."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def state_fingerprint(state: Mapping[str, Any] | None) -> str | None:
    """``sha256:`` hash of model weights (name -> array: names, shapes, bytes), so an
    estimator warm-started from them can record which weights in JSON; None for None."""
    if state is None:
        return None
    digest = hashlib.sha256()
    for name in sorted(state):
        arr = np.ascontiguousarray(np.asarray(state[name], dtype=np.float32))
        digest.update(f"{name}{arr.shape}".encode() + arr.tobytes())
    return f"sha256:{digest.hexdigest()[:16]}"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to ``path`` through a temporary file and a rename."""
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def reading(path: Path) -> Iterator[None]:
    """Turn any failure to decode ``path`` (a damaged parquet, npy or safetensors file
    whose manifest was updated with it) into one sentence instead of a traceback."""
    try:
        yield
    except FreshsidError:
        raise
    except Exception as exc:  # noqa: BLE001 - each reader raises its own types for damaged bytes
        raise FreshsidError(f"{path} cannot be read ({type(exc).__name__}); rebuild the artifact that holds it.") from None


def check_output(out: Path, *, marker: str = MANIFEST) -> Path:
    """Refuse, before any work starts, an output folder this command must not write: a
    path naming no folder of its own, an existing file, a folder holding files that
    are not freshsid's (no ``marker`` file in it), or a place without write permission."""
    out = Path(out)
    if out.name in ("", ".", ".."):
        raise FreshsidError(f"Output path {out} names no folder of its own; pass a new folder name, e.g. runs/out.")
    if out.exists() and not out.is_dir():
        raise FreshsidError(f"Output path {out} exists and is not a folder; choose another --out.")
    if out.is_dir() and not (out / marker).exists() and any(out.iterdir()):
        raise FreshsidError(f"Output folder {out} holds files that freshsid did not write; choose another --out "
                            "(nothing there was touched).")
    check_writable(out if out.exists() else out.absolute().parent)
    return out


def check_writable(folder: Path) -> None:
    """Refuse, before any work starts, to write in ``folder`` (or its nearest existing parent) without permission."""
    place = next(p for p in (Path(folder).absolute(), *Path(folder).absolute().parents) if p.exists())
    if not os.access(place, os.W_OK | os.X_OK):
        raise FreshsidError(f"Cannot write in {place} (permission denied); choose another --out.")


def _lock_path(out: Path) -> Path:
    return Path(out).parent / f".{Path(out).name}.lock"


def lock_held(out: Path) -> bool:
    """Whether a process holds the lock of ``out`` now (:func:`output_lock`); a lock file a
    killed holder left is not held. Creates nothing."""
    try:
        fd = os.open(_lock_path(out), os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # (releases the probe's lock)
    return False


@contextlib.contextmanager
def output_lock(out: Path, *, busy: str | None = None) -> Iterator[None]:
    """Hold the lock of ``out`` (a hidden file beside it): a second writer is refused (with
    ``busy`` as the message, if given)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    path = _lock_path(out)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o666 & ~_UMASK)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FreshsidError(busy or f"Another freshsid command is writing {out} now; wait for it to finish or "
                                "choose another --out.") from None
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # while still held: a writer that opens it afresh comes after us
    finally:
        os.close(fd)


@contextlib.contextmanager
def artifact_dir(out: Path) -> Iterator[Path]:
    """Yield a temporary folder to fill; on success it replaces ``out`` atomically.

    The caller writes its files and then calls :func:`finish_manifest` on the
    temporary folder. If the block raises, nothing at ``out`` changes. ``out`` is only
    replaced if it is a freshsid artifact; a second writer to it is refused; the
    temporary folders a killed writer left beside it are removed.
    """
    out = check_output(out)
    with output_lock(out):
        for leftover in out.parent.glob(f".{glob.escape(out.name)}.*"):
            if leftover.is_dir() and leftover.suffix in (".tmp", ".old"):
                shutil.rmtree(leftover, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700; the artifact gets the usual mode
        try:
            yield tmp
            if not (tmp / MANIFEST).exists():
                raise RuntimeError("artifact_dir block finished without writing a manifest")
            if out.exists():
                trash = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
                os.replace(out, trash / "old")
                os.replace(tmp, out)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


# The libraries whose arithmetic a result depends on (recorded in every manifest).
NUMERIC_PACKAGES = ("torch", "numpy", "faiss-cpu", "scipy", "polars")


@functools.cache
def _versions() -> dict[str, str | None]:
    def version(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {"python": platform.python_version(), **{name: version(name) for name in NUMERIC_PACKAGES}}


def environment() -> dict[str, Any]:
    """What a result depends on besides its inputs and seed: library versions and torch's
    intra-op thread count (reductions may be split by thread, so results can differ
    between thread counts; with the same count they are repeatable)."""
    torch = sys.modules.get("torch")
    return {**_versions(), "torch_threads": torch.get_num_threads() if torch is not None else None}


def finish_manifest(folder: Path, **fields: Any) -> Manifest:
    """Hash every file of ``folder`` and write its manifest; returns the manifest.

    Only the folder's own files are listed: a sub-folder is an artifact with a manifest
    of its own, which the parent records by fingerprint (in ``inputs``)."""
    folder = Path(folder)
    files = {p.name: file_sha256(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}
    fields["info"] = {**fields.get("info", {}), "environment": environment()}
    manifest = Manifest(files=files, **fields)
    manifest = manifest.model_copy(update={"digest": manifest.expected_digest})
    write_json_atomic(folder / MANIFEST, manifest.model_dump(mode="json"))
    return manifest


def read_manifest(folder: Path, kind: str | None = None, *, verify: bool = True, require: tuple[str, ...] = ()) -> Manifest:
    """Read and check an artifact's manifest: kind, schema version, its own digest, file
    names (plain names inside the folder), file hashes, and that it lists every file in
    ``require`` (the files its loader will read)."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise FreshsidError(f"{folder} is not a freshsid artifact (no {MANIFEST}); pass the folder a stage wrote.")
    try:
        manifest = Manifest.model_validate_json(path.read_text())
    except ValueError as exc:
        first = str(exc).splitlines()[0]
        raise FreshsidError(f"{path} is not a valid manifest ({first}); rebuild the artifact.") from None
    if kind is not None and manifest.kind != kind:
        raise FreshsidError(f"{folder} holds a {manifest.kind!r} artifact, not the {kind!r} expected here.")
    if manifest.schema_version not in READABLE_VERSIONS:
        raise FreshsidError(
            f"{folder} has schema version {manifest.schema_version}, this freshsid reads {SCHEMA_VERSION}; rebuild it."
        )
    # Version 1 manifests carry no digest; every other check below still applies to them.
    if manifest.schema_version >= 2 and manifest.digest != manifest.expected_digest:
        raise FreshsidError(f"{path} does not match its own digest (edited by hand?); rebuild {folder}.")
    for name in manifest.files:
        if name in ("", ".", "..") or Path(name).name != name or "\\" in name:
            raise FreshsidError(f"{path} lists {name!r}, which is not a file of the folder itself; rebuild {folder}.")
    unlisted = [name for name in require if name not in manifest.files]
    if unlisted:
        raise FreshsidError(f"{path} does not list {', '.join(unlisted)}, which freshsid reads; rebuild {folder}.")
    if verify:
        for name, digest in manifest.files.items():
            file = folder / name
            if not file.is_file():
                raise FreshsidError(f"{file} is missing from the artifact; rebuild {folder}.")
            if file_sha256(file) != digest:
                raise FreshsidError(f"{file} does not match its manifest hash (corrupted or edited); rebuild {folder}.")
    return manifest
