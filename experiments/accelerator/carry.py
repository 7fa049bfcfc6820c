"""The wheels the H200 image lacks: download them here, check that they and the working tree
fit one device call (64 MiB), and install the missing ones there without a network.

  python experiments/accelerator/carry.py download   # here, before the device call
  python experiments/accelerator/carry.py check      # sizes; fails above the limit
  python experiments/accelerator/carry.py install    # there (device.sh does it)

Standard library only, and argparse rather than absl: `install` runs before anything else
is importable. `install` unpacks a wheel only when its distribution is not installed
already (the image's own torch, jax, protobuf ... are never shadowed) into a folder that
device.sh puts on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import pathlib
import re
import subprocess
import sys
import zipfile

REPO = pathlib.Path(__file__).resolve().parents[2]
CARRY = REPO / "runs" / "accelerator_carry"  # /runs/ is git-ignored
SITE = REPO / "runs" / "accelerator_site"
LIMIT_BYTES = 64 << 20
PYTHON_VERSION = "3.12"
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64")
# setup.py's requirements that the image lacks, and their own needs that it may lack, pinned
# to the versions this code is tested with. Left out: pyarrow (~40 MB; only tfds builders
# that write Arrow files need it).
WHEELS = (
    "ml-collections==1.1.0", "gguf==0.19.0", "tensorboardX==2.6.5", "qwix==0.1.8",
    "grain==0.2.18", "tensorflow-datasets==4.9.10",
    "array-record==0.8.6", "etils==1.15.0", "cloudpickle==3.1.3", "portpicker",
    "dm-tree==0.1.10", "immutabledict==4.3.1", "simple-parsing==0.1.9", "docstring-parser",
    "tensorflow-metadata==1.21.0", "googleapis-common-protos==1.76.0", "protobuf",
    "termcolor", "toml", "wrapt", "attrs", "psutil", "six",
)
# Published as source only: built here into a pure-Python wheel (tfds imports promise).
SOURCE_ONLY = ("promise==2.3",)


def distribution_of(wheel: pathlib.Path) -> str:
  """PEP 427: the distribution is the file name up to the first '-'."""
  return wheel.name.split("-", 1)[0]


def installed(name: str) -> str | None:
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return None


def python_matches(wheel: pathlib.Path, version: tuple[int, int]) -> bool:
  """Whether `wheel` installs on CPython `version`: pure (py3-none), abi3 (cpNM and later)
  or built for exactly that interpreter (cpXY)."""
  python_tags, abi = wheel.name[:-len(".whl")].split("-")[-3:-1]
  here = version[0] * 100 + version[1]
  built = [int(t[2]) * 100 + int(t[3:]) for t in python_tags.split(".")
           if re.fullmatch(r"cp\d{2,3}", t)]
  if abi == "none":
    return any(t.startswith("py3") for t in python_tags.split(".")) or here in built
  if abi == "abi3":
    return any(b <= here for b in built)
  return here in built


def download(dest: pathlib.Path, packages=WHEELS) -> int:
  dest.mkdir(parents=True, exist_ok=True)
  cmd = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--python-version",
         PYTHON_VERSION, *[f"--platform={p}" for p in PLATFORMS], "--no-deps", "-d", str(dest),
         *packages]
  build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(dest), *SOURCE_ONLY]
  code = 0
  for c in (cmd, build):
    print(" ".join(c), flush=True)
    code = code or subprocess.run(c, check=False).returncode
  return code


def tree_bytes() -> int:
  """Bytes of what a device call copies besides the carry: tracked + unignored files."""
  files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                         capture_output=True, check=False).stdout.split(b"\0")
  return sum((REPO / f.decode()).stat().st_size for f in files
             if f and (REPO / f.decode()).is_file())


def check(dest: pathlib.Path, limit: int = LIMIT_BYTES) -> int:
  wheels = sorted(dest.glob("*.whl"))
  for wheel in wheels:
    print(f"{wheel.stat().st_size / 2**20:8.2f} MiB  {wheel.name}")
  carried = sum(w.stat().st_size for w in wheels)
  tree = tree_bytes()
  total = carried + tree
  print(f"{carried / 2**20:8.2f} MiB  {len(wheels)} wheels in {dest}\n"
        f"{tree / 2**20:8.2f} MiB  working tree (tracked + unignored files)\n"
        f"{total / 2**20:8.2f} MiB  in all; limit {limit / 2**20:.0f} MiB: "
        f"{'fits' if total < limit else 'TOO LARGE'}")
  wanted = {re.split(r"[=<>]", p)[0].replace("-", "_").lower() for p in WHEELS + SOURCE_ONLY}
  have = {distribution_of(w).lower() for w in wheels}
  missing = sorted(wanted - have)
  if missing:
    print(f"not downloaded: {', '.join(missing)}")
  return 0 if total < limit and wheels else 1


def install(dest: pathlib.Path, site: pathlib.Path) -> int:
  """Unpacks each carried wheel whose distribution is not installed; prints what it did."""
  site.mkdir(parents=True, exist_ok=True)
  version = sys.version_info[:2]
  for wheel in sorted(dest.glob("*.whl")):
    name = distribution_of(wheel)
    present = installed(name)
    if present:
      print(f"present  {name} {present}")
    elif not python_matches(wheel, version):
      print(f"SKIPPED  {wheel.name}: not for Python {version[0]}.{version[1]}")
    else:
      with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
      print(f"unpacked {wheel.name}")
  print(f"add to PYTHONPATH: {site}")
  return 0


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("command", choices=["download", "check", "install"])
  parser.add_argument("--dest", type=pathlib.Path, default=CARRY, help="the carried wheels")
  parser.add_argument("--site", type=pathlib.Path, default=SITE, help="where install unpacks")
  args = parser.parse_args()
  if args.command == "download":
    return download(args.dest) or check(args.dest)
  if args.command == "check":
    return check(args.dest)
  return install(args.dest, args.site)


if __name__ == "__main__":
  sys.exit(main())
