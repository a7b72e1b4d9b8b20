"""Command-line conventions shared by `imaginet-shards`, `imaginet-train` and tools/: exit statuses
0/1/2, `--json -` alone on stdout, -v/-q logging, help text on every option, `--version`, and one
`Error:` line instead of a traceback."""
from __future__ import annotations

import argparse
import json
import logging
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from helpers.shardsets import build_shards
from imaginet_shards.cli import main
from imaginet_shards.cli_common import (
    EXIT_ERROR,
    add_logging_arguments,
    configure_logging,
    run_tool,
    write_json,
)
from imaginet_train.cli import main as train_main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return build_shards(tmp_path_factory.mktemp("cli"), 12, max_count=6)


@pytest.fixture
def damaged(shards, tmp_path) -> Path:
    """A copy of the shard set with one byte of one image flipped."""
    dest = tmp_path / "damaged"
    shutil.copytree(shards, dest)
    shard = dest / "imaginet-000001.tar"
    offset, size = (int(v) for v in (dest / "imaginet-000001.idx").read_text().splitlines()[1].split()[1:3])
    data = bytearray(shard.read_bytes())
    data[offset + size // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    return dest


def run(group: click.Group, *args: str):
    return CliRunner().invoke(group, list(args))


def test_verify_exit_statuses(shards, damaged, tmp_path):
    passing = run(main, "verify", str(shards))
    assert passing.exit_code == 0, passing.output
    assert "OK" in passing.stdout
    failing = run(main, "verify", str(damaged))
    assert failing.exit_code == 1, failing.output
    assert "PROBLEM imaginet-000001.tar" in failing.stderr and "FAILED" in failing.stdout
    missing = run(main, "verify", str(tmp_path / "nothing"))
    assert missing.exit_code == 2
    assert missing.stderr.startswith("Error: ") and "no manifest.json" in missing.stderr
    assert missing.exception is None or isinstance(missing.exception, SystemExit)


def test_json_dash_is_alone_on_stdout(shards, damaged):
    inspected = run(main, "inspect", str(shards), "--json", "-")
    assert inspected.exit_code == 0, inspected.output
    assert json.loads(inspected.stdout)["samples"] == 12
    assert "origin" in inspected.stderr  # the human report moved to stderr
    verified = run(main, "verify", str(damaged), "--json", "-")
    assert verified.exit_code == 1
    report = json.loads(verified.stdout)
    assert report["ok"] is False and report["shards_checked"] == 2
    assert {"shard": "imaginet-000001.tar", "key": "", "message": "sha256 differs from the manifest"} \
        in report["problems"]


def test_json_file_is_written_whole(shards, tmp_path):
    out = tmp_path / "sub" / "inspect.json"
    result = run(main, "inspect", str(shards), "--json", str(out))
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["samples"] == 12
    assert [p.name for p in out.parent.iterdir()] == ["inspect.json"]  # no temporary left behind
    assert "origin" in result.stdout


def test_verbose_shows_info_lines(shards):
    args = ["bench", str(shards), "--backend", "cpu", "--stage", "full", "--threads", "1",
            "--batch-size", "4", "--batches", "1", "--warmup", "0", "--repeats", "1"]
    verbose = run(main, "-v", *args)
    assert verbose.exit_code == 0, verbose.output
    assert "INFO imaginet_shards.loaders.factory: " in verbose.stderr
    assert "CpuLoader" in verbose.stderr


@pytest.mark.parametrize("verbose,quiet,shown", [
    (0, False, {"WARNING"}), (1, False, {"INFO", "WARNING"}), (2, False, {"DEBUG", "INFO", "WARNING"}),
    (0, True, set()), (2, True, set()),
])
def test_logging_levels_and_restore(capsys, verbose, quiet, shown):
    logger = logging.getLogger("imaginet_shards.test_cli")
    handlers = list(logging.getLogger().handlers)
    restore = configure_logging(verbose, quiet)
    for level in ("DEBUG", "INFO", "WARNING"):
        logger.log(getattr(logging, level), "a %s line", level)
    restore()
    err = capsys.readouterr().err
    assert {level for level in ("DEBUG", "INFO", "WARNING") if f"a {level} line" in err} == shown
    assert logging.getLogger().handlers == handlers


def test_train_version():
    result = run(train_main, "--version")
    assert result.exit_code == 0 and result.stdout.startswith("imaginet-train, version ")


@pytest.mark.parametrize("module,args,message", [
    ("imaginet_shards", ["pack", "--root", ".", "--annotations", "README.md", "--out", "x",
                         "--max-count", "0"], "Error: max_count must be at least 1, got 0"),
    ("imaginet_train", ["linear", "missing-checkpoint.pt", "missing-shards", "--out", "x"],
     "Error: "),
])
def test_bad_value_is_one_line_and_status_2(tmp_path, module, args, message):
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(message) and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and done.stdout == ""


def test_usage_error_is_status_2():
    assert run(main, "verify").exit_code == 2
    assert run(train_main, "selfcon", "--epochs", "x").exit_code == 2


def _options(group: click.Group, path: str):
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _options(command, f"{path} {name}")
        else:
            for param in command.params:
                if isinstance(param, click.Option):
                    yield f"{path} {name} {param.opts[-1]}", param
    for param in group.params:
        if isinstance(param, click.Option):
            yield f"{path} {param.opts[-1]}", param


def test_every_option_has_help():
    options = [*_options(main, "imaginet-shards"), *_options(train_main, "imaginet-train")]
    assert len(options) > 60
    assert [where for where, option in options if not option.help] == []


@pytest.mark.parametrize("tool", sorted(p.name for p in (REPO / "tools").glob("*.py")))
def test_every_tool_argument_has_help(monkeypatch, tool):
    monkeypatch.syspath_prepend(str(REPO / "tools"))  # as when run as a script
    parser = add_logging_arguments(runpy.run_path(str(REPO / "tools" / tool), run_name="tool")["parser"]())
    assert [action.option_strings or action.dest for action in parser._actions if not action.help] == []


def _tool(monkeypatch, main_function, *argv: str) -> int:
    monkeypatch.setattr(sys, "argv", ["tool", *argv])
    parser = argparse.ArgumentParser()
    parser.add_argument("--value", type=int, default=1, help="A number.")
    with pytest.raises(SystemExit) as info:
        run_tool(parser, main_function)
    return info.value.code


def test_tool_statuses_and_error_line(monkeypatch, capsys):
    def check(args: argparse.Namespace) -> int | None:
        if args.value < 0:
            raise ValueError(f"value must be >= 0, got {args.value}")
        logging.getLogger("imaginet_shards.tool").info("checked %d", args.value)
        return 1 if args.value == 0 else None

    assert _tool(monkeypatch, check, "--value", "3") == 0
    assert _tool(monkeypatch, check, "--value", "0") == 1
    assert _tool(monkeypatch, check, "--value", "-1") == EXIT_ERROR
    assert capsys.readouterr().err == "Error: value must be >= 0, got -1\n"
    assert _tool(monkeypatch, check, "-v", "--value", "4") == 0
    assert "INFO imaginet_shards.tool: checked 4" in capsys.readouterr().err
    assert _tool(monkeypatch, check, "--value", "x") == 2  # argparse's usage error


def test_tool_bug_keeps_its_traceback(monkeypatch):
    def broken(args: argparse.Namespace) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(sys, "argv", ["tool"])
    with pytest.raises(KeyError):
        run_tool(argparse.ArgumentParser(), broken)


def test_write_json_to_stdout(capsys, tmp_path):
    write_json("-", {"a": 1})
    assert json.loads(capsys.readouterr().out) == {"a": 1}
