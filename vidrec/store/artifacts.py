"""Published model versions on disk: `<root>/v{N}/` plus a LATEST pointer.

Gorse's pattern: the publisher writes a complete directory under an ever-increasing id,
then replaces LATEST atomically (write temp + os.replace); serving polls LATEST and never
sees a half-written version. The previous version stays for `vidrec rollback`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

LATEST = "LATEST"
_VERSION = re.compile(r"^v(\d+)$")


class ArtifactStore:
    def __init__(self, root: str | Path, keep: int = 2) -> None:
        self.root = Path(root)
        self.keep = keep

    def versions(self) -> list[str]:
        """Complete versions (with a manifest), oldest first."""
        if not self.root.exists():
            return []
        found = []
        for p in self.root.iterdir():
            m = _VERSION.match(p.name)
            if m and (p / "manifest.json").exists():
                found.append((int(m.group(1)), p.name))
        return [name for _, name in sorted(found)]

    def latest(self) -> str | None:
        f = self.root / LATEST
        if not f.exists():
            return None
        v = f.read_text().strip()
        return v if (self.root / v / "manifest.json").exists() else None

    def path(self, version: str) -> Path:
        return self.root / version

    def next_version(self) -> str:
        nums = [int(m.group(1)) for v in self.versions() if (m := _VERSION.match(v))]
        return f"v{max(nums, default=0) + 1}"

    def stage(self, model_dir: Path) -> str:
        """Copy a model directory in as the next version (not yet LATEST); return it."""
        self.root.mkdir(parents=True, exist_ok=True)
        version = self.next_version()
        tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=self.root))
        shutil.copytree(model_dir, tmp, dirs_exist_ok=True)
        manifest = json.loads((tmp / "manifest.json").read_text())
        manifest["trained_as"] = manifest.get("version")
        manifest["version"] = version
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        os.replace(tmp, self.root / version)
        return version

    def set_latest(self, version: str) -> None:
        if not (self.root / version / "manifest.json").exists():
            raise FileNotFoundError(f"{self.root / version}: no such published version")
        tmp = self.root / f".{LATEST}.tmp"
        tmp.write_text(version)
        os.replace(tmp, self.root / LATEST)

    def previous(self) -> str | None:
        """The newest version older than LATEST (what rollback goes back to)."""
        cur = self.latest()
        vs = self.versions()
        if cur not in vs:
            return None
        i = vs.index(cur)
        return vs[i - 1] if i > 0 else None

    def prune(self, protect: set[str] | None = None) -> list[str]:
        """Delete all but the newest `keep` versions (LATEST and `protect` always stay)."""
        keep = set(self.versions()[-self.keep:]) | (protect or set())
        if (cur := self.latest()) is not None:
            keep.add(cur)
        removed = []
        for v in self.versions():
            if v not in keep:
                shutil.rmtree(self.root / v, ignore_errors=True)
                removed.append(v)
        return removed
