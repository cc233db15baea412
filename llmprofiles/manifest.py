"""The engine manifest: what was built, from what, and the hashes that prove it.

``manifest.json`` sits beside the artifacts in the model version folder. The
build writes it last; runtimes refuse to load when it is missing, unreadable, or
when an artifact's sha256 disagrees with it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from llmprofiles.profiles.spec import ProfileSet

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class EngineLoadError(RuntimeError):
    """The engine in a version folder cannot be used; the message says how to fix it."""


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def write_manifest(version_dir: Path, fields: dict[str, Any], artifacts: list[str]) -> dict[str, Any]:
    """Hash ``artifacts`` (names inside ``version_dir``) and write the manifest."""
    files = {name: sha256_file(version_dir / name) for name in artifacts}
    manifest = {**fields, "format_version": FORMAT_VERSION, "files": files, "content_hash": sha256_json(files)}
    tmp = version_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    tmp.replace(version_dir / MANIFEST)
    return manifest


def read_manifest(version_dir: Path, verify: bool = True) -> dict[str, Any]:
    """The manifest of ``version_dir``; with ``verify`` every artifact's sha256 is checked."""
    path = Path(version_dir) / MANIFEST
    hint = "run `make build` to (re)build the engine"
    if not path.is_file():
        raise EngineLoadError(f"no engine manifest at {path}; {hint}")
    try:
        manifest = json.loads(path.read_text())
        ProfileSet.from_dict(manifest["profiles"])
        files = manifest["files"]
        if not isinstance(files, dict):
            raise TypeError(f"'files' must map artifact names to sha256, got {type(files).__name__}")
    except (ValueError, KeyError, TypeError) as e:
        raise EngineLoadError(f"engine manifest {path} is corrupt ({e}); {hint}") from e
    if manifest.get("format_version") != FORMAT_VERSION:
        raise EngineLoadError(f"engine manifest {path} has format {manifest.get('format_version')}, "
                              f"expected {FORMAT_VERSION}; {hint}")
    if verify:
        for name, digest in files.items():
            f = Path(version_dir) / name
            if not f.is_file():
                raise EngineLoadError(f"engine artifact {f} is missing; {hint}")
            if sha256_file(f) != digest:
                raise EngineLoadError(f"engine artifact {f} does not match its manifest hash (corrupt); {hint}")
    return manifest


def profiles_of(manifest: dict[str, Any]) -> ProfileSet:
    return ProfileSet.from_dict(manifest["profiles"])
