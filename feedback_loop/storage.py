"""Where adapters and other artifacts live: a local folder, mirrored to shared storage when set.

Every machine keeps artifacts under `REFINERY_ARTIFACTS_DIR` with the same layout
(`adapters/<project>/round-<n>/`), and an adapter's recorded path is that local folder. With
`REFINERY_ARTIFACTS_URL` set (any fsspec URL: `s3://bucket/refinery`, `gs://…`, `file:///mnt/nfs/…`),
the worker that trains an adapter publishes its folder to the same relative place under the URL,
and a worker on another machine that needs it fetches it on first use. Without the URL, artifacts
stay local (the embedded default, or one shared filesystem mounted on every machine).

Training checkpoints are not published: they are for resuming on the machine that trains.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from django.conf import settings

SKIP = ("checkpoints",)  # top-level folders of an adapter that stay local


def artifacts_url() -> str:
    return (getattr(settings, "REFINERY_ARTIFACTS_URL", "") or "").rstrip("/")


def _relative(local_dir: str | Path) -> str:
    root = Path(settings.REFINERY_ARTIFACTS_DIR).resolve()
    path = Path(local_dir).resolve()
    try:
        return path.relative_to(root).as_posix()
    except ValueError as error:
        raise ValueError(f"{local_dir} is not under REFINERY_ARTIFACTS_DIR ({root})") from error


def _filesystem():
    import fsspec

    fs, root = fsspec.core.url_to_fs(artifacts_url())
    return fs, root.rstrip("/")


def artifact_publish(local_dir: str | Path) -> str | None:
    """Copy a local artifact folder to shared storage; its URL, or None when there is none."""
    if not artifacts_url():
        return None
    fs, root = _filesystem()
    relative = _relative(local_dir)
    local = Path(local_dir)
    for file in sorted(local.rglob("*")):
        inner = file.relative_to(local)
        if not file.is_file() or inner.parts[0] in SKIP:
            continue
        target = f"{root}/{relative}/{inner.as_posix()}"
        fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        fs.put_file(str(file), target)
    return f"{artifacts_url()}/{relative}"


def artifact_fetch(local_dir: str | Path) -> Path:
    """The artifact folder on this machine: fetched from shared storage when it is not here yet."""
    local = Path(local_dir)
    if not artifacts_url() or (local.is_dir() and any(local.iterdir())):
        return local
    fs, root = _filesystem()
    source = f"{root}/{_relative(local)}"
    if not fs.exists(source):
        raise FileNotFoundError(f"{local} is neither here nor at {artifacts_url()}/{_relative(local)}")
    # Fetched beside its place and renamed: a half-fetched folder is never taken for a whole one.
    partial = local.with_name(local.name + ".fetching")
    shutil.rmtree(partial, ignore_errors=True)  # left by a fetch that died
    try:
        for remote in fs.find(source):
            target = partial / remote[len(source) + 1 :]
            target.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(remote, str(target))
        local.parent.mkdir(parents=True, exist_ok=True)
        partial.replace(local)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)  # a full disk: no half-fetched folder stays behind
        raise
    return local


def artifacts_list(prefix: str = "adapters") -> list[str]:
    """The artifact folders one level under `prefix` (e.g. "adapters/3"), from shared storage when
    set, else from the local folder: what the web side can offer, wherever it was trained."""
    if artifacts_url():
        fs, root = _filesystem()
        base = f"{root}/{prefix.strip('/')}"
        if not fs.exists(base):
            return []
        return sorted(
            f"{prefix.strip('/')}/{entry['name'].rstrip('/').rsplit('/', 1)[-1]}"
            for entry in fs.ls(base, detail=True)
            if entry["type"] == "directory"
        )
    base = Path(settings.REFINERY_ARTIFACTS_DIR) / prefix
    return (
        sorted(f"{prefix.strip('/')}/{p.name}" for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
    )
