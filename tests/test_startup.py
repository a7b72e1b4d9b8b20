"""Start-up: the commands that do not load data import none of the heavy libraries (pandas, torch,
numba, OpenCV), so that `imaginet-shards --help` and `inspect` start in a fraction of a second.
A regression guard on what is imported, not a timed test (docs/benchmarks.md has the times)."""
import json
import subprocess
import sys
from pathlib import Path

from helpers.trees import make_dataset
from imaginet_shards.ops.pack import PackOptions, pack

HEAVY = {"pandas", "torch", "numba", "cv2", "webdataset", "sklearn", "scipy"}
REPO = Path(__file__).resolve().parents[1]


def _imported_by(*args: str) -> set[str]:
    """The top-level packages imported by running `imaginet-shards ARGS` in a fresh interpreter."""
    probe = ("import json, sys\n"
             "from imaginet_shards.cli import main\n"
             f"main({list(args)!r}, standalone_mode=False)\n"
             "print('MODULES', json.dumps(sorted(sys.modules)))\n")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return {name.split(".")[0] for name in json.loads(done.stdout.split("MODULES", 1)[1])}


def test_help_imports_no_heavy_library():
    modules = _imported_by("--help")
    assert "click" in modules
    assert not (HEAVY | {"numpy"}) & modules


def test_inspect_imports_no_heavy_library(tmp_path):
    root = tmp_path / "root"
    pack(PackOptions(root=root, annotations=make_dataset(root, 12), out=tmp_path / "out",
                     progress=False))
    modules = _imported_by("inspect", str(tmp_path / "out"))
    assert "imaginet_shards" in modules and "numpy" in modules  # it did read the set
    assert not HEAVY & modules
