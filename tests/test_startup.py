"""Start-up: the commands that do not load data import none of the heavy libraries (pandas, torch,
numba, OpenCV), so that `imaginet-shards --help`, `inspect`, `verify` and `imaginet-train --help`
start in a fraction of a second.
A regression guard on what is imported, not a timed test (docs/benchmarks.md has the times)."""
import json
import subprocess
import sys
from pathlib import Path

from helpers.trees import make_dataset
from imaginet_shards.ops.pack import PackOptions, pack

HEAVY = {"pandas", "torch", "numba", "cv2", "webdataset", "sklearn", "scipy"}
REPO = Path(__file__).resolve().parents[1]


def _imported_by(*args: str, cli: str = "imaginet_shards.cli") -> set[str]:
    """The top-level packages imported by running `imaginet-shards ARGS` (the command line of
    `cli`) in a fresh interpreter."""
    probe = ("import json, sys\n"
             f"from {cli} import main\n"
             "try:\n"
             f"    main({list(args)!r}, standalone_mode=False)\n"
             "except SystemExit as exc:\n"
             "    assert exc.code == 0, exc.code\n"
             "print('MODULES', json.dumps(sorted(sys.modules)))\n")
    output = _python(probe, timeout=120)
    return {name.split(".")[0] for name in json.loads(output.split("MODULES", 1)[1])}


def _python(probe: str, timeout: int) -> str:
    """The standard output of `probe` run by a fresh interpreter in the repository (which must
    succeed)."""
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_help_imports_no_heavy_library():
    modules = _imported_by("--help")
    assert "click" in modules
    assert not (HEAVY | {"numpy"}) & modules


def test_train_help_imports_no_heavy_library():
    """`imaginet-train --help` lists its commands and their choices (architectures, recipes)
    without importing torch."""
    for args in (("--help",), ("selfcon", "--help"), ("bench", "--help")):
        modules = _imported_by(*args, cli="imaginet_train.cli")
        assert "click" in modules, args
        assert not HEAVY & modules, args


def test_inspect_and_verify_import_no_heavy_library(tmp_path):
    root = tmp_path / "root"
    pack(PackOptions(root=root, annotations=make_dataset(root, 12), out=tmp_path / "out",
                     progress=False))
    for command in ("inspect", "verify"):
        modules = _imported_by(command, str(tmp_path / "out"))
        assert "numpy" in modules, command  # it did read the set
        assert not HEAVY & modules, command


def test_png_kernel_loads_before_the_workers_fork_with_the_signature_decoding_uses(tmp_path):
    """numba is imported on the first PNG, not with the loader; the CPU loader loads the PNG
    kernel in the parent before its workers fork (they inherit it), and what it loads is the very
    specialisation that PNG and tile windows call: no decode after it compiles or loads another."""
    root = tmp_path / "root"
    pack(PackOptions(root=root, annotations=make_dataset(root, 12), out=tmp_path / "out",
                     progress=False))
    probe = (
        "import sys\n"
        "import cv2, numpy as np\n"
        "from imaginet_shards import make_loader\n"
        "from imaginet_shards.codecs import tiles, windows\n"
        "print('IMPORTED', 'numba' in sys.modules)\n"
        f"loader = make_loader({str(tmp_path / 'out')!r}, backend='cpu', batch_size=4, workers=2,\n"
        "                     device='cpu')\n"
        "images, labels = next(iter(loader))\n"
        "from imaginet_shards.codecs.png_kernel import unfilter_rows\n"
        "print('PARENT', len(unfilter_rows.signatures), tuple(images.shape))\n"
        "pixels = np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8)\n"
        "ok, encoded = cv2.imencode('.png', pixels)\n"
        "assert (windows.decode_window(encoded.tobytes(), 5, 7, 40, 30)\n"
        "        == cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)[5:45, 7:37]).all()\n"
        "assert (windows.decode_window(tiles.encode_tiles(pixels, 32), 5, 7, 40, 30)\n"
        "        == pixels[5:45, 7:37]).all()\n"
        "print('AFTER DECODING', len(unfilter_rows.signatures))\n")
    output = _python(probe, timeout=300)
    assert "IMPORTED False" in output
    assert "PARENT 1 (4, 3, 96, 96)" in output
    assert "AFTER DECODING 1" in output
