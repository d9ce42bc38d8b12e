"""`gather-gpu-wheels.sh --smoke`: the script's own walk, run unchanged and offline over a folder
of small wheels made here, checked to follow extras, leave the target's packages alone, warn where
a requirement rules out the target's version, and list (exit 1) what no wheel satisfies.

    python scripts/gather_smoke.py scripts/gather-gpu-wheels.sh
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

# name -> (version, requirements)
WHEELS = {
    "alpha": ("1.0", ["beta[css]>=1", "gamma>=2", "held>=0.5", "winonly; sys_platform == 'win32'"]),
    "beta": ("1.0", ["tinyc; extra == 'css'", "docsonly; extra == 'docs'", "held>=2"]),
    "gamma": ("1.0", []),  # too old for alpha: nothing satisfies gamma>=2
    "tinyc": ("0.3", []),
    "docsonly": ("1.0", []),
    "winonly": ("1.0", []),
}


def make_wheel(folder: Path, name: str, version: str, requires: list[str]) -> None:
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": b"",
        f"{info}/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
            + "".join(f"Requires-Dist: {r}\n" for r in requires)
        ).encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: gather_smoke\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = [
        f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}"
        for path, data in files.items()
    ]
    files[f"{info}/RECORD"] = ("\n".join([*record, f"{info}/RECORD,,"]) + "\n").encode()
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as z:
        for path, data in files.items():
            z.writestr(path, data)


def main() -> int:
    script = sys.argv[1]
    with tempfile.TemporaryDirectory(prefix="ftkit-gather-smoke-") as tmp:
        index, dest = Path(tmp) / "index", Path(tmp) / "dest"
        index.mkdir()
        for name, (version, requires) in WHEELS.items():
            make_wheel(index, name, version, requires)
        env = {
            **os.environ,
            "PIP_NO_INDEX": "1",
            "PIP_FIND_LINKS": str(index),
            "TARGET_HAS": "held",
            "TARGET_VERSIONS": "held==1.0",
            "SKIP": "",
        }
        run = subprocess.run(
            ["bash", script, str(dest), "alpha"], env=env, capture_output=True, text=True
        )
        print(run.stdout + run.stderr)
        gathered = sorted(w.name.split("-")[0] for w in dest.glob("*.whl"))
        checks = {
            "exit status 1 (something unsatisfied)": run.returncode == 1,
            "alpha, beta and tinyc (beta's css extra) gathered, nothing else": gathered
            == ["alpha", "beta", "tinyc"],
            "gamma>=2 listed with its chain": "could not satisfy: gamma>=2 (alpha -> gamma>=2)"
            in run.stderr,
            "held>=2 warned against the target's 1.0": "warning: needs held>=2 (the target has 1.0"
            in run.stderr,
        }
    for what, ok in checks.items():
        print(f"  {'ok  ' if ok else 'FAIL'} {what}")
    print("gather smoke:", "ok" if all(checks.values()) else "FAILED")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
