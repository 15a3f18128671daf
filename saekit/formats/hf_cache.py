"""`Sae.from_pretrained(release, sae_id)` offline: find an SAE's files in the Hugging Face cache.

Layout: `<hub>/models--ORG--NAME/snapshots/<revision>/<path>`, `<hub>` = $HF_HUB_CACHE, else
$HF_HOME/hub, else ~/.cache/huggingface/hub; `refs/main` names the revision when present. `release` is the
repo id (`ORG/NAME`) or a release name of an SAELens registry file (`pretrained_saes.yaml`: release →
`repo_id`, `saes: [{id, path}]`) passed as `registry=`. Nothing is downloaded: a missing SAE raises a
FormatError naming the directory to provide.

    path = resolve_pretrained("org/my-saes", "blocks.8.hook_resid_pre")
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from saekit.formats.spec import FormatError


def hub_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path.home() / ".cache" / "huggingface" / "hub"


def registry_entry(release: str, sae_id: str, registry: Path) -> tuple[str, str]:
    """(repo_id, path inside the repo) of `sae_id` in `release` of an SAELens-style registry file."""
    try:
        raw: Any = yaml.safe_load(Path(registry).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise FormatError(f"cannot read the SAE registry {registry} ({err})") from None
    entry = raw.get(release) if isinstance(raw, dict) else None
    if not isinstance(entry, dict) or "repo_id" not in entry:
        raise FormatError(f"release {release!r} is not in {registry}")
    for sae in entry.get("saes") or []:
        if isinstance(sae, dict) and sae.get("id") == sae_id:
            return str(entry["repo_id"]), str(sae.get("path") or sae_id)
    raise FormatError(f"release {release!r} in {registry} has no SAE with id {sae_id!r}")


def resolve_pretrained(
    release: str, sae_id: str, *, registry: str | Path | None = None, hub_cache: str | Path | None = None
) -> Path:
    """The local directory holding `sae_id` of `release`; FormatError naming the directory to provide."""
    if registry is not None:
        repo_id, inner = registry_entry(release, sae_id, Path(registry))
    elif release.count("/") == 1:
        repo_id, inner = release, sae_id
    else:
        raise FormatError(
            f"release {release!r} is not a Hugging Face repo id (ORG/NAME); pass the repo id, or the SAELens "
            "registry file that names it (registry=path/to/pretrained_saes.yaml)"
        )
    hub = Path(hub_cache).expanduser() if hub_cache is not None else hub_cache_dir()
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    for snapshot in _snapshots(repo):
        if (snapshot / inner).is_dir():
            return snapshot / inner
    raise FormatError(
        f"{repo_id}/{inner} is not in the Hugging Face cache ({repo}/snapshots/<revision>/{inner}) and "
        "saekit never downloads; download it elsewhere and copy it there, or pass its directory to Sae.load"
    )


def _snapshots(repo: Path) -> list[Path]:
    """Snapshots to look in: the one refs/main names first, then the others, newest first."""
    snapshots = repo / "snapshots"
    if not snapshots.is_dir():
        return []
    found = sorted(
        (p for p in snapshots.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True
    )
    main = repo / "refs" / "main"
    if main.is_file():
        revision = main.read_text().strip()
        found.sort(key=lambda p: p.name != revision)
    return found
