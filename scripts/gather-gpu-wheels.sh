#!/usr/bin/env bash
# Gathers the wheels that scripts/gpu-check.sh installs on a CUDA machine with no network whose
# Python already holds torch, transformers, peft and the other packages named in TARGET_HAS below
# (this workplace's H200 image): ftkit's own needs (its core, the worker and unsloth extras, read
# from pyproject.toml) and what they need, for CPython 3.12 on x86-64 Linux, into one folder
# (default .whl/, ignored by git).
#
#   scripts/gather-gpu-wheels.sh [DEST] [REQUIREMENT ...]
#   scripts/gather-gpu-wheels.sh --smoke     the same walk, offline, over wheels it makes itself
#
# It walks the requirements itself, one `pip download --no-deps` per name, because pip's resolver
# would also resolve (and download) the target's own torch: a name the target holds is never
# fetched; a version is the newest that meets every requirement seen on it, and is fetched again
# when a later requirement rules the first one out. Extras are followed (nbconvert needs
# bleach[css], which needs tinycss2). What no wheel satisfies is listed at the end, with the chain
# that needs it, and the exit status is then 1. Then the large parts the target does not use are
# trimmed out, so all of it fits the 64 MiB a device call carries. Run it where pip reaches PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ "${1:-}" = "--smoke" ]; then
  exec "$PY" scripts/gather_smoke.py "$0"
fi
DEST=${1:-.whl}
shift || true
ROOTS=("$@")
if [ ${#ROOTS[@]} -eq 0 ]; then  # ftkit's own: core, worker and unsloth extras, from pyproject.toml
  mapfile -t ROOTS < <("$PY" - <<'PY'
import tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
extras = project["optional-dependencies"]
print("\n".join(project["dependencies"] + extras["worker"] + extras["unsloth"]))
PY
)
fi
# The target's versions of what it holds, where a gathered wheel's requirement may name them.
TARGET_VERSIONS=${TARGET_VERSIONS:-"torch==2.11.0 transformers==5.17.0 accelerate==1.15.0 huggingface-hub==1.33.0 numpy==2.5.2 tokenizers==0.23.2 safetensors==0.8.0 triton==3.6.0 torchvision==0.26.0 peft==0.21.0"}
# Packages the target image already holds (its `pip list`, names only; KINDS.md of the device).
TARGET_HAS=${TARGET_HAS:-"absl-py accelerate aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs certifi charset-normalizer click cloudpickle cuda-bindings cuda-core cuda-pathfinder cuda-toolkit einops filelock frozenlist fsspec h11 hf-xet httpcore httpx huggingface-hub idna jinja2 joblib markdown-it-py markupsafe mdurl mpmath multidict networkx numpy nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx packaging pandas peft pillow pip propcache protobuf psutil pyarrow pygments python-dateutil pyyaml regex requests rich safetensors sentencepiece setuptools shellingham six sympy tokenizers torch torchvision tqdm transformers triton typer typing-extensions typing-inspect urllib3 wheel xxhash yarl"}
# Never gathered: xformers is optional to unsloth (PyTorch attention without it), large, and built
# for one torch each.
SKIP=${SKIP:-"xformers"}
# Kept of bitsandbytes' per-CUDA libraries: the target's torch is built for CUDA 13.
KEEP_CUDA=${KEEP_CUDA:-cuda13}

mkdir -p "$DEST"
"$PY" - "$DEST" "$TARGET_VERSIONS" "$TARGET_HAS" "$SKIP" "$KEEP_CUDA" "${ROOTS[@]}" <<'PY'
import re
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

dest, versions, has, skip, keep_cuda, *roots = sys.argv[1:]
dest = Path(dest)
target = {canonicalize_name(r.split("==")[0]): Version(r.split("==")[1]) for r in versions.split()}
held = {canonicalize_name(n) for n in has.split()} | {canonicalize_name(n) for n in skip.split()}
env = {**default_environment(), "python_version": "3.12", "python_full_version": "3.12.3",
       "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
       "implementation_name": "cpython", "platform_python_implementation": "CPython"}
platforms = ["manylinux_2_35_x86_64", "manylinux_2_34_x86_64", "manylinux_2_31_x86_64",
             "manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"]
pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
       "--python-version", "3.12", "--implementation", "cp", "-d", str(dest)]
pip += [arg for p in platforms for arg in ("--platform", p)]

specs: dict[str, SpecifierSet] = {}
got: dict[str, tuple[Version, Path]] = {}
extras_seen: dict[str, set[str]] = {}  # the extras asked of each gathered name
conflicts: list[str] = []
unsatisfied: list[str] = []
todo = [
    (req, (str(req),))
    for req in map(Requirement, roots)
    if req.marker is None or req.marker.evaluate({**env, "extra": ""})
]


def requirements(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return Parser().parsestr(z.read(meta).decode()).get_all("Requires-Dist") or []


def needs(wheel: Path, extras: set[str], chain: tuple[str, ...]) -> list:
    """The wheel's requirements that apply on the target with these extras, each with its chain."""
    out = []
    for line in requirements(wheel):
        req = Requirement(line)
        if req.marker is None or any(
            req.marker.evaluate({**env, "extra": e}) for e in extras | {""}
        ):
            shown = req.name + (f"[{','.join(sorted(req.extras))}]" if req.extras else "")
            out.append((req, (*chain, f"{shown}{req.specifier}")))
    return out


while todo:
    req, chain = todo.pop(0)
    name = canonicalize_name(req.name)  # its marker was evaluated where it was found
    if name in held:
        if name in target and not req.specifier.contains(target[name], prereleases=True):
            conflicts.append(f"{req} (the target has {target[name]}; {' -> '.join(chain)})")
        continue
    new_extras = set(req.extras) - extras_seen.get(name, set())
    extras_seen.setdefault(name, set()).update(req.extras)
    specs[name] = specs.get(name, SpecifierSet()) & req.specifier
    if name in got and specs[name].contains(got[name][0], prereleases=True):
        if new_extras:  # asked again with an extra: what that extra needs, too
            todo += needs(got[name][1], new_extras, chain)
        continue
    if name in got:
        got.pop(name)[1].unlink()  # ruled out by a later requirement: fetch a version that fits
    before = set(dest.glob("*.whl"))
    fetched = subprocess.run([*pip, f"{req.name}{specs[name]}"], capture_output=True, text=True)
    if fetched.returncode != 0:
        why = (fetched.stderr.strip().splitlines() or ["pip download failed"])[-1]
        unsatisfied.append(f"{req.name}{specs[name]} ({' -> '.join(chain)}): {why}")
        continue
    wheel = next(
        w
        for w in dest.glob("*.whl")
        if w not in before or canonicalize_name(w.name.split("-")[0]) == name
    )
    got[name] = (Version(wheel.name.split("-")[1]), wheel)
    print(f"  {wheel.name}", flush=True)
    todo += needs(wheel, extras_seen[name], chain)

drop = {  # what the target does not use, out of the wheels
    "bitsandbytes": lambda n: re.search(r"libbitsandbytes_(cuda|rocm)\d+", n) and keep_cuda not in n,
    "unsloth": lambda n: n.startswith("studio/"),  # its web UI
}
for name, (_, wheel) in got.items():
    if name not in drop:
        continue
    trimmed = wheel.with_suffix(".trimmed")
    with zipfile.ZipFile(wheel) as old, zipfile.ZipFile(trimmed, "w", zipfile.ZIP_DEFLATED) as new:
        for item in old.infolist():
            if drop[name](item.filename):
                continue
            data = old.read(item)
            if item.filename.endswith(".dist-info/RECORD"):  # the dropped files leave RECORD too
                kept = [r for r in data.decode().splitlines() if not drop[name](r.split(",")[0])]
                data = ("\n".join(kept) + "\n").encode()
            new.writestr(item, data)
    size = wheel.stat().st_size / 2**20
    trimmed.replace(wheel)
    print(f"trimmed {wheel.name}: {size:.1f} -> {wheel.stat().st_size / 2**20:.1f} MiB")
total = sum(w.stat().st_size for w in dest.glob("*.whl")) / 2**20
print(f"{len(got)} wheels, {total:.1f} MiB in {dest}" + (" (over 64 MiB)" if total > 64 else ""))
for line in conflicts:
    print(f"warning: needs {line}", file=sys.stderr)
for line in unsatisfied:
    print(f"could not satisfy: {line}", file=sys.stderr)
sys.exit(1 if unsatisfied else 0)
PY
