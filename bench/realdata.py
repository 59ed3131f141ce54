#!/usr/bin/env python3
"""A benchmark corpus of real data, for ../shared/bench/compare.sh's --make-cmd/--step-cmd.

Generations are releases of a real project, as its source distributions on PyPI (fetched with
pip and cached), next to real binaries of this machine (shared libraries from /usr/lib and one
large library as the big file). Real source trees are many small text files that change a
little between releases; real binaries compress and deduplicate as they do, not as random bytes.

    bench/realdata.py make DIR           generation 0: the first release and the binaries
    bench/realdata.py step DIR GEN       generation GEN: the next release replaces the source;
                                         a few libraries are replaced by others (an upgrade)
    compare.sh --make-cmd 'bench/realdata.py make' --step-cmd 'bench/realdata.py step' \\
               --big bin/big.so

The big file is the shared library under /usr/lib closest to 60 MiB, of 40-120 MiB (else rustc's
driver library); `make` prints which, since the corpus depends on the machine's files.
Environment: REALDATA_PROJECT (default Django), REALDATA_VERSIONS (default 4.2,5.0,5.1,5.2),
REALDATA_BIN_MIB (default 120: the libraries besides the big file), REALDATA_CACHE.
"""

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

PROJECT = os.environ.get("REALDATA_PROJECT", "Django")
VERSIONS = os.environ.get("REALDATA_VERSIONS", "4.2,5.0,5.1,5.2").split(",")
BIN_BYTES = int(os.environ.get("REALDATA_BIN_MIB", "120")) << 20
CACHE = Path(os.environ.get("REALDATA_CACHE", Path.home() / ".cache" / "rewind-bench" / "pypi"))
# Libraries replaced at each step: an upgrade touches a few.
SWAP_PER_STEP = 3


def sdist(version: str) -> Path:
    """The project's source distribution of `version`, from the cache or fetched by pip."""
    folder = CACHE / f"{PROJECT}-{version}"
    found = sorted(folder.glob("*.tar.gz")) if folder.exists() else []
    if not found:
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
             f"{PROJECT}=={version}", "-d", str(folder)],
            check=True,
        )
        found = sorted(folder.glob("*.tar.gz"))
    if not found:
        sys.exit(f"realdata.py: pip gave no source distribution of {PROJECT} {version}")
    return found[0]


def extract(archive: Path, dest: Path) -> None:
    """Unpack into `dest`, without the archive's top folder, keeping the archive's mtimes."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    with tarfile.open(archive) as tar:
        members = []
        for m in tar.getmembers():
            parts = m.name.split("/", 1)
            if len(parts) < 2 or not parts[1] or not (m.isfile() or m.isdir()):
                continue
            m.name = parts[1]
            members.append(m)
        # The "data" filter (no links out, no devices) where Python has it (3.11.4 and later).
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, members=members, filter="data")
        else:
            tar.extractall(dest, members=members)


def libraries() -> list[Path]:
    """Shared libraries of this machine, in a fixed order (by path)."""
    out = []
    for root in ["/usr/lib/x86_64-linux-gnu", "/usr/lib"]:
        base = Path(root)
        if not base.is_dir():
            continue
        for p in sorted(base.iterdir()):
            if p.is_file() and not p.is_symlink() and ".so" in p.name and 64 << 10 <= p.stat().st_size < 40 << 20:
                out.append(p)
    return out


def big_library() -> Path:
    candidates = []
    for root, _, names in os.walk("/usr/lib"):
        for n in names:
            p = Path(root) / n
            if ".so" in n and not p.is_symlink():
                size = p.stat().st_size
                if 40 << 20 <= size <= 120 << 20:
                    candidates.append((size, str(p)))
    if candidates:
        return Path(min(candidates, key=lambda c: (abs(c[0] - (60 << 20)), c[1]))[1])
    rustc = sorted(Path.home().glob(".rustup/toolchains/*/lib/librustc_driver-*.so"))
    if rustc:
        return rustc[0]
    sys.exit("realdata.py: no shared library of 40-120 MiB under /usr/lib and no rustc driver")


def pick(libs: list[Path], start: int) -> list[Path]:
    """Libraries from `start` on (wrapping), up to BIN_BYTES."""
    chosen, total = [], 0
    for i in range(len(libs)):
        p = libs[(start + i) % len(libs)]
        if total + p.stat().st_size > BIN_BYTES:
            continue
        chosen.append(p)
        total += p.stat().st_size
    return chosen


def copy(p: Path, dest: Path) -> None:
    shutil.copy2(p, dest / p.name)


def make(dir: Path) -> None:
    dir.mkdir(parents=True, exist_ok=True)
    extract(sdist(VERSIONS[0]), dir / "src")
    bins = dir / "bin"
    bins.mkdir(exist_ok=True)
    big = big_library()
    shutil.copy2(big, bins / "big.so")
    for p in pick(libraries(), 0):
        copy(p, bins)
    print(f"realdata: {PROJECT} {VERSIONS[0]}, big file {big} ({big.stat().st_size >> 20} MiB)", file=sys.stderr)


def step(dir: Path, gen: int) -> None:
    version = VERSIONS[min(gen, len(VERSIONS) - 1)]
    extract(sdist(version), dir / "src")
    bins = dir / "bin"
    libs = libraries()
    before = {p.name for p in pick(libs, (gen - 1) * SWAP_PER_STEP)}
    after = pick(libs, gen * SWAP_PER_STEP)
    for name in before - {p.name for p in after}:
        (bins / name).unlink(missing_ok=True)
    for p in after:
        if not (bins / p.name).exists():
            copy(p, bins)
    print(f"realdata: generation {gen}: {PROJECT} {version}", file=sys.stderr)


def main() -> None:
    if len(sys.argv) >= 3 and sys.argv[1] == "make":
        make(Path(sys.argv[2]))
    elif len(sys.argv) >= 4 and sys.argv[1] == "step":
        step(Path(sys.argv[2]), int(sys.argv[3]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
