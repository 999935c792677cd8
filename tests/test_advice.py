"""Advice that works: every flag an error message suggests exists in the command that can
raise it (parsed with that command's real argparse parser), the missing-weights message says
how to get TotalSegmentator's weights, and a missing extra ends in exit code 2 with the
``pip install "nstage[...]"`` to run."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nstage.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "nstage"
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)(?:[ =]([A-Za-z0-9_.:/-]+))?")
# Which commands can raise the errors of a module (the user reads the advice in that command).
COMMANDS_OF = {
    "anatomy/totalseg.py": ("run", "batch", "anatomy"),
    "anatomy/precomputed.py": ("run", "anatomy"),
    "thresholds.py": ("run", "batch"),
    "batch.py": ("batch", "gc-run"),
    "io/limits.py": ("run", "batch"),
    "io/identity.py": ("run", "batch"),
    "io/outputs.py": ("run", "batch"),
    "io/integrity.py": ("run",),
    "lesions/nnunet.py": ("run", "batch"),
    "io/readers.py": ("run",),
    "io/dicom.py": ("run",),
    "io/suv.py": ("run", "suv"),
    "commands/_common.py": ("run", "batch"),
    "gcrun.py": ("gc-run",),
    "phantom/spec.py": ("phantom",),
    "evaluate.py": ("evaluate",),
}
# advice.py holds advice shared by several modules: the commands follow the flag.
SHARED_ADVICE = {"--anatomy": COMMANDS_OF["anatomy/totalseg.py"],
                 "--lesions": COMMANDS_OF["lesions/nnunet.py"]}
# Required arguments of each command, so a suggested flag is parsed in a complete command line.
BASE_ARGS = {
    "run": ["--ct", "ct.mha", "--out", "out"],
    "batch": ["--cases", "cases", "--out", "out"],
    "anatomy": ["--ct", "ct.mha", "--out", "out"],
    "suv": ["pet", "-o", "out.mha"],
    "gc-run": ["--algorithm", "slug", "--cases", "cases", "--out", "out"],
    "phantom": ["out"],
    "evaluate": ["--pred", "p.csv", "--truth", "t.csv", "--out", "out"],
    "demo": [],
    "stage": [],
}
# Words after a flag in prose that are not its value ("--dose as the activity ...").
PROSE = {"and", "or", "to", "if", "as", "the", "for", "of", "in", "with", "folder", "file",
         "flag", "option", "must", "is", "are", "again", "too", "alone"}
SAMPLE = {float: "1.5", int: "2"}


def _commands_of(module: Path) -> tuple[str, ...]:
    rel = module.relative_to(SRC).as_posix()
    if rel.startswith("commands/") and rel != "commands/_common.py":
        name = Path(rel).stem.replace("_", "-")
        return (name,)
    return COMMANDS_OF.get(rel, ())


def _advice_texts() -> list[tuple[Path, int, str]]:
    """String constants in nstage's error constructors (and module-level hint constants)
    that name a command-line flag; parser help texts and docstrings are not advice."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text())
        parser_calls = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
                parser_calls.add(id(node.value))  # a docstring explains, it does not advise
            if isinstance(node, ast.Call):
                name = getattr(node.func, "attr", None) or getattr(node.func, "id", None)
                if name in ("add_argument", "add_parser", "ArgumentParser",
                            "add_argument_group", "add_mutually_exclusive_group"):
                    parser_calls |= {id(n) for n in ast.walk(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and id(node) not in parser_calls and FLAG.search(node.value):
                text = node.value
                if text.lstrip().startswith(("nstage ", "Usage", "usage")) or "\n" in text:
                    continue  # docstrings and module usage examples
                found.append((path, node.lineno, text))
    return found


def _without_pip(text: str) -> str:
    return re.sub(r"pip install[^)'\";]*", "", text)


def _suggestions() -> list[tuple[str, str, str | None, str]]:
    """(command, flag, value or None, where) for every flag any advice text suggests."""
    out = []
    for path, line, text in _advice_texts():
        commands = _commands_of(path)
        named = re.search(r"nstage ([a-z-]+)", text)
        if named:
            commands = (named.group(1),)
        for flag, value in FLAG.findall(_without_pip(text)):
            if path.name == "advice.py":
                commands = SHARED_ADVICE.get(flag, ())
            for command in commands:
                out.append((command, flag, value or None, f"{path.relative_to(ROOT)}:{line}"))
        if not commands and FLAG.search(_without_pip(text)):
            out.append(("?", FLAG.search(text).group(1), None,
                        f"{path.relative_to(ROOT)}:{line}"))
    return out


def test_advice_texts_are_collected():
    where = {w.split(":")[0] for *_, w in _suggestions()}
    # the places known to give advice with flags: a collector that finds nothing proves nothing
    assert {"src/nstage/advice.py", "src/nstage/lesions/nnunet.py", "src/nstage/io/suv.py",
            "src/nstage/io/readers.py", "src/nstage/gcrun.py"} <= where
    assert len(_suggestions()) >= 20


def _subparser(parser, command):
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sub.choices[command]


@pytest.mark.parametrize("command, flag, value, where", _suggestions(),
                         ids=lambda v: str(v) if v else "-")
def test_every_suggested_flag_parses_in_its_command(command, flag, value, where):
    assert command != "?", f"{where}: advice names {flag} but no command is known to raise it"
    parser = build_parser()
    sub = _subparser(parser, command)
    action = sub._option_string_actions.get(flag)
    assert action is not None, f"{where}: 'nstage {command}' has no {flag}"
    argv = [command, *BASE_ARGS[command], flag]
    if action.nargs != 0:
        if action.choices is not None:
            if value and value.lower() not in PROSE:
                assert value in action.choices, (
                    f"{where}: '{flag} {value}' is not one of {sorted(action.choices)}")
                argv.append(value)
            else:
                argv.append(sorted(action.choices)[0])
        else:
            # A number for numeric (or custom-typed numeric) options, else a word.
            argv.append(SAMPLE.get(action.type, "x" if action.type in (None, str, Path)
                                   else "2"))
    parser.parse_args(argv)  # SystemExit (exit 2) fails the test


def test_the_anatomy_fallback_flag_is_the_same_in_run_batch_anatomy():
    from nstage.advice import ANATOMY_FALLBACK

    parser = build_parser()
    flag, value = ANATOMY_FALLBACK.split()
    for command in ("run", "batch", "anatomy"):
        args = parser.parse_args([command, *BASE_ARGS[command], flag, value])
        assert (getattr(args, "anatomy", None) or args.backend) == "classical"


# --------------------------------------------------------------------------- weights, extras


def _nstage(args, env_extra=None, block=()):
    """Run nstage in a subprocess; ``block`` makes those packages unimportable there."""
    code = ("import sys\n"
            f"for name in {list(block)!r}:\n"
            "    sys.modules[name] = None  # import fails as if not installed\n"
            "from nstage.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env_extra or {})}
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def phantom_input(tmp_path_factory) -> Path:
    from nstage.phantom import PhantomSpec, make_phantom, write_phantom

    out = tmp_path_factory.mktemp("advice-phantom")
    write_phantom(make_phantom(PhantomSpec(nodes=("7",), seed=4)), out)
    return out / "input"


@pytest.mark.parametrize("fast, task", [(False, "total"), (True, "total_fast")])
def test_missing_weights_say_how_to_get_them(tmp_path, phantom_input, fast, task):
    empty = tmp_path / "weights"
    empty.mkdir()
    args = ["run", "--ct", phantom_input, "--out", tmp_path / "out", "--quiet",
            "--anatomy", "totalsegmentator"] + (["--fast"] if fast else [])
    res = _nstage(args, {"TOTALSEG_WEIGHTS_PATH": str(empty)})
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr
    msg = lines[0]
    assert str(empty) in msg
    assert f"totalseg_download_weights -t {task}" in msg
    assert "TOTALSEG_HOME_DIR" in msg and "TOTALSEG_WEIGHTS_PATH" in msg
    assert "--anatomy classical" in msg and "--backend" not in msg
    assert not (tmp_path / "out" / "n-stage.json").exists()
    # ... and the advice works: the same command with the suggested flag stages the study.
    res = _nstage(args[:-2 if not fast else -3] + ["--anatomy", "classical", "--no-report"])
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "out" / "n-stage.json").is_file()


def test_gc_run_without_the_gc_extra_exit_2_names_the_install(tmp_path):
    res = _nstage(["gc-run", "--algorithm", "a", "--cases", tmp_path, "--out", tmp_path / "o"],
                  {"GC_TOKEN": "x"}, block=("gcapi", "httpx"))
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines() == [
        "nstage gc-run: error: the optional package 'gcapi' is not installed "
        "(install it with: pip install \"nstage[gc]\")"]


@pytest.mark.parametrize("flags, fallback", [
    (["--lesions", "nnunet", "--lesion-model", "MODEL"], "--lesions suv"),
    (["--anatomy", "totalsegmentator", "--fast"], "--anatomy classical"),
])
def test_models_without_torch_exit_2_names_the_install(tmp_path, phantom_input, flags,
                                                      fallback):
    """The model folders are there (tiny ones), the models extra is not importable."""
    from tinymodels import make_tiny_nnunet_model, make_tiny_totalseg_weights

    model = make_tiny_nnunet_model(tmp_path / "lesion-model")
    weights = tmp_path / "ts"
    make_tiny_totalseg_weights(weights, fast=True)
    args = ["run", "--ct", phantom_input, "--out", tmp_path / "out", "--no-report", "--quiet",
            *[str(model) if f == "MODEL" else f for f in flags]]
    res = _nstage(args, {"TOTALSEG_WEIGHTS_PATH": str(weights)},
                  block=("torch", "nnunetv2", "totalsegmentator"))
    assert res.returncode == 2, res.stderr
    (line,) = res.stderr.strip().splitlines()
    assert 'pip install "nstage[models]"' in line and fallback in line, line


def test_a_missing_optional_package_anywhere_exits_2(monkeypatch, capsys):
    """Whatever command imports it, a missing optional package is advice, not a bug."""
    from nstage import cli

    def needs_gcapi(args):
        raise ModuleNotFoundError("No module named 'httpx'", name="httpx")

    parser = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: _with_func(parser(), needs_gcapi))
    assert cli.main(["demo"]) == 2
    err = capsys.readouterr().err
    assert err == ("nstage demo: error: the optional package 'httpx' is not installed "
                   "(install it with: pip install \"nstage[gc]\")\n")

    def bug(args):
        raise ModuleNotFoundError("No module named 'nstage.nothing'", name="nstage.nothing")

    monkeypatch.setattr(cli, "build_parser", lambda: _with_func(parser(), bug))
    assert cli.main(["demo"]) == 1  # a missing module of nstage itself is a bug
    assert "internal error" in capsys.readouterr().err


def _with_func(parser, func):
    _subparser(parser, "demo").set_defaults(func=func)
    return parser
