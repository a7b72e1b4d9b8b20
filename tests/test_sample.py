"""The embedded stand-in dataset: layout, labels, determinism, format modes, sizes, no trivial bias."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image
from sklearn.metrics import roc_auc_score

from imaginet_shards.format.annotations import (
    GENERATOR_FAMILY,
    REAL_GENERATOR,
    VOCABULARIES,
    read_annotations,
)
from imaginet_shards.sample import write as sample_module
from imaginet_shards.sample.plan import SampleOptions, plan_sample, scaled_size
from imaginet_shards.sample.render import _pattern, generator_trace
from imaginet_shards.sample.sources import MIN_COUNT, SOURCES, SPLITS, TRACES, TraceComponent
from imaginet_shards.sample.write import write_sample

SMALL = SampleOptions(count=120, max_side=96, seed=0)


def read_all(out: Path) -> pd.DataFrame:
    """The three annotation files of a sample, with a `split` column."""
    return pd.concat([read_annotations(out / f"{split}.txt").assign(split=split) for split in SPLITS],
                     ignore_index=True)


def tree_bytes(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sample") / "small"
    write_sample(out, SMALL, progress=False)
    return out


@pytest.fixture(scope="module")
def balanced_300(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sample") / "balanced"
    write_sample(out, SampleOptions(count=300, max_side=128, seed=1, workers=2), progress=False)
    return out


def test_annotation_files_parse_and_name_existing_files(small: Path) -> None:
    frame = read_all(small)
    assert len(frame) == SMALL.count
    assert frame["path"].is_unique
    assert all((small / path).is_file() for path in frame["path"])
    assert not list(small.rglob(".*.tmp*"))
    written = {str(p.relative_to(small)) for p in small.rglob("*") if p.suffix != ".txt"
               and p.is_file()}
    assert written == set(frame["path"])


def test_labels_cover_every_generator_and_content_in_every_split(small: Path) -> None:
    frame = read_all(small)
    for split in SPLITS:
        rows = frame[frame["split"] == split]
        assert set(rows["generator"]) == set(range(len(VOCABULARIES["generator"]))), split
    assert set(frame["content"]) == set(range(len(VOCABULARIES["content"])))
    assert (frame["origin"] == 0).sum() == SMALL.count // 2
    for content in range(4):  # the same content mix in both classes
        rows = frame[frame["content"] == content]
        assert abs((rows["origin"] == 0).sum() - (rows["origin"] == 1).sum()) <= 1


def test_folders_and_extensions_look_like_imaginet(small: Path) -> None:
    frame = read_all(small)
    tops = {path.split("/")[0] for path in frame["path"]}
    assert {"imagenet", "val2017", "ffhq", "wikiart", "danbooru2021", "photozilla", "progan_val",
            "imagenet_stylegan", "sdxl_photos_fake", "journeydb", "dalle3"} <= tops
    extensions = {Path(path).suffix for path in frame["path"]}
    assert extensions <= {".JPEG", ".jpg", ".png", ".webp"}
    imagenet = frame[frame["path"].str.startswith("imagenet/")]
    assert imagenet["path"].str.match(r"imagenet/ILSVRC/Data/CLS-LOC/val/ILSVRC2012_val_\d{8}\.").all()


def test_same_options_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    options = SampleOptions(count=MIN_COUNT, max_side=64, seed=3)
    write_sample(tmp_path / "a", options, progress=False)
    write_sample(tmp_path / "b", SampleOptions(count=MIN_COUNT, max_side=64, seed=3, workers=2),
                 progress=False)
    write_sample(tmp_path / "c", SampleOptions(count=MIN_COUNT, max_side=64, seed=4), progress=False)
    first, second, other = (tree_bytes(tmp_path / name) for name in "abc")
    assert first == second
    assert first["test.txt"] != other["test.txt"]
    shared = set(first) & set(other)
    assert any(first[name] != other[name] for name in shared if not name.endswith(".txt"))


def test_killed_run_leaves_no_annotation_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    options = SampleOptions(count=MIN_COUNT, max_side=64)
    write_sample(tmp_path, options, progress=False)
    calls = []

    def dying(job):
        calls.append(job)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return 0

    monkeypatch.setattr(sample_module, "_write_item", dying)
    with pytest.raises(KeyboardInterrupt):
        write_sample(tmp_path, options, progress=False)
    assert not any((tmp_path / f"{split}.txt").exists() for split in SPLITS)


def test_balanced_formats_are_independent_of_the_class(balanced_300: Path) -> None:
    frame = read_all(balanced_300)
    formats = frame["path"].map(lambda p: Image.open(balanced_300 / p).format)
    mix = pd.crosstab(formats, frame["origin"], normalize="columns")
    assert set(mix.index) == {"JPEG", "PNG", "WEBP"}
    assert (mix[0] - mix[1]).abs().max() < 0.05


def test_realistic_formats_are_the_sources_own(tmp_path: Path) -> None:
    write_sample(tmp_path, SampleOptions(count=MIN_COUNT, max_side=64, formats="realistic"),
                 progress=False)
    frame = read_all(tmp_path)
    webp = frame["path"].str.endswith(".webp")
    assert webp.any() and (frame.loc[webp, "origin"] == 1).all()
    assert frame.loc[frame["path"].str.startswith("imagenet/"), "path"].str.endswith(".JPEG").all()
    assert frame.loc[frame["path"].str.startswith("ffhq/"), "path"].str.endswith(".png").all()
    for path in frame["path"][::7]:
        expected = {".JPEG": "JPEG", ".jpg": "JPEG", ".png": "PNG", ".webp": "WEBP"}[Path(path).suffix]
        assert Image.open(tmp_path / path).format == expected


def test_written_images_have_their_planned_size(small: Path) -> None:
    for item in plan_sample(SMALL)[::9]:
        with Image.open(small / item.path) as image:
            assert image.size == (item.width, item.height)
            assert image.mode == "RGB"


def test_sizes_scale_with_max_side() -> None:
    assert scaled_size(500, 375, 1024) == (500, 375)
    assert scaled_size(1792, 1024, 1024) == (1024, 585)  # capped at max_side
    assert scaled_size(1024, 1024, 512) == (512, 512)
    assert scaled_size(256, 256, 64) == (32, 32)  # at least 32 pixels
    realistic = {item.path.split("/")[0]: (item.width, item.height)
                 for item in plan_sample(SampleOptions(count=MIN_COUNT, max_side=1024,
                                                       formats="realistic"))}
    assert realistic["ffhq"] == (1024, 1024) and realistic["progan_val"] == (256, 256)
    small, large = (plan_sample(SampleOptions(count=MIN_COUNT, max_side=side)) for side in (192, 384))
    ratios = [b.width / a.width for a, b in zip(small, large) if a.width > 64]
    assert ratios and all(1.9 < r < 2.1 for r in ratios)


def auc(frame: pd.DataFrame, values: list[float]) -> float:
    return float(roc_auc_score(frame["origin"], values))


def test_no_trivial_statistic_separates_real_from_synthetic(balanced_300: Path) -> None:
    frame = read_all(balanced_300)
    paths = [balanced_300 / p for p in frame["path"]]
    sizes = [p.stat().st_size for p in paths]
    means = [float(np.asarray(Image.open(p).convert("RGB")).mean()) for p in paths]
    widths = [Image.open(p).width for p in paths]
    for name, values in (("file size", sizes), ("mean colour", means), ("width", widths)):
        assert 0.35 < auc(frame, values) < 0.65, name


def test_traces_are_rotation_and_flip_invariant_and_distinct() -> None:
    rng = np.random.default_rng(0)
    spectra = {}
    for generator in TRACES:
        trace = generator_trace(rng, generator, 120, 120)  # 120: a multiple of every period
        power = np.abs(np.fft.fft2(trace, axes=(0, 1))) ** 2
        for variant in (np.rot90(trace), trace[::-1], trace[:, ::-1]):
            variant_power = np.abs(np.fft.fft2(variant, axes=(0, 1))) ** 2
            assert np.allclose(variant_power, power, atol=1e-2 * power.max())
        assert trace.mean() == pytest.approx(0, abs=1e-3)
        assert trace.std() == pytest.approx(1, rel=0.05)
        spectra[generator] = power / power.sum()
    for a in spectra:
        for b in spectra:
            if a < b:  # every generator its own trace; families far apart
                distance = np.abs(spectra[a] - spectra[b]).sum()
                assert distance > (0.5 if GENERATOR_FAMILY[a] != GENERATOR_FAMILY[b] else 0.05), (a, b)
    assert REAL_GENERATOR not in TRACES


@pytest.mark.parametrize("kind, period", [(k, p) for k in ("diag", "axis", "dots") for p in (2, 5, 6)]
                         + [("knight", 4), ("knight", 12)])
def test_trace_components_have_unit_rms(kind: str, period: int) -> None:
    pattern = _pattern(TraceComponent(kind, period), 120, 120, np.array([5, 11]))
    assert pattern.std() == pytest.approx(1, rel=1e-3)


def test_trace_components_refuse_aliased_periods() -> None:
    with pytest.raises(ValueError, match="period >= 4"):
        TraceComponent("knight", 2)
    with pytest.raises(ValueError, match="unknown trace kind"):
        TraceComponent("rings", 8)  # type: ignore[arg-type]


@pytest.mark.parametrize("change, message", [
    ({"count": MIN_COUNT - 1}, "count"),
    ({"count": 100.0}, "count"),
    ({"seed": -1}, "seed"),
    ({"max_side": 32}, "max_side"),
    ({"formats": "webp"}, "formats"),
    ({"splits": (0.5, 0.5)}, "splits"),
    ({"splits": (0.6, 0.4, 0.0)}, "splits"),
    ({"workers": 0}, "workers"),
])
def test_bad_options_raise_value_error(change: dict, message: str) -> None:
    options = SampleOptions(**{**SampleOptions().__dict__, **change})
    with pytest.raises(ValueError, match=message):
        plan_sample(options)


def test_every_source_is_planned() -> None:
    items = plan_sample(SampleOptions(count=MIN_COUNT))
    labels = {item.labels for item in items}
    assert labels == {source.labels for source in SOURCES}


def test_cli_prints_a_summary(tmp_path: Path) -> None:
    from imaginet_shards.cli import main

    result = CliRunner().invoke(main, ["sample", str(tmp_path / "out"), "--count", str(MIN_COUNT),
                                       "--max-side", "64", "--formats", "realistic"])
    assert result.exit_code == 0, result.output
    assert f"{MIN_COUNT} images" in result.output and "realistic" in result.output
    assert (tmp_path / "out" / "test.txt").is_file()
    bad = CliRunner().invoke(main, ["sample", str(tmp_path / "bad"), "--count", "5"])
    assert bad.exit_code != 0 and "count must be" in bad.output
