"""The whole `appsim` surface at once: help on every command and option, --json wherever data is printed,
the README's command tables, and the one error style (one line, exit 2 usage / 1 failure, no traceback)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import click
import pytest

from pipelines.cli import COMMANDS, cli, main
from tests.conftest import set_aws_env

README = Path(__file__).resolve().parents[3] / "README.md"
# Leaf commands that print data without a --json flag, and why that is right for each.
NO_JSON = {
    "serve": "runs the server",
    "drift check": "prints JSON always",
    "registry show": "prints JSON always",
    "neighbors transform": "prints JSON always",
    "pipeline definition": "prints the definition JSON",
    "pipeline upsert": "reports one ARN",
    "schedule set": "reports one ARN",
    "schedule set-decision": "reports one ARN",
    "schedule delete": "reports one yes/no",
    "monitoring apply": "--dry-run prints JSON; otherwise reports what it applied",
    "monitoring grafana": "prints the dashboard JSON",
    "monitoring rules": "prints a Prometheus rules file (YAML)",
}


def leaves(group: click.Group = cli, prefix: str = "") -> dict[str, click.Command]:
    ctx = click.Context(group)
    found = {}
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        path = f"{prefix}{name}"
        if isinstance(command, click.Group):
            found |= {path: command} | leaves(command, path + " ")
        else:
            found[path] = command
    return found


def test_every_command_and_option_has_help_and_no_seed_section_numbers():
    missing, seed_refs = [], []
    for path, command in leaves().items():
        texts = [command.help or ""]
        if not (command.help or "").strip():
            missing.append(path)
        for param in command.params:
            if isinstance(param, click.Option):
                if not (param.help or "").strip():
                    missing.append(f"{path} {param.opts[0]}")
                texts.append(param.help or "")
        seed_refs += [f"{path}: {m}" for text in texts for m in re.findall(r"seed('s)? \d+(\.\d+)?", text)]
    assert missing == []
    assert seed_refs == []


def test_every_command_that_prints_data_has_json():
    commands = {path: c for path, c in leaves().items() if not isinstance(c, click.Group)}
    without = sorted(path for path, c in commands.items() if not any("--json" in p.opts for p in c.params))
    assert without == sorted(NO_JSON)


def test_the_readme_lists_every_command_group_and_command():
    text = README.read_text()
    listed = set(re.findall(r"^\| `appsim ([a-z-]+)", text, flags=re.MULTILINE))
    assert listed == set(COMMANDS)
    mentioned = set(re.findall(r"`(?:appsim )?([a-z-]+ [a-z-]+)", text))
    groups = {path for path, c in leaves().items() if isinstance(c, click.Group)}
    subcommands = {path for path in leaves() if " " in path}
    assert subcommands - mentioned == set(), "subcommands missing from the README"
    assert groups <= set(COMMANDS)


def test_docs_link_only_inside_the_repository():
    root = README.parent
    for document in [README, *sorted((root / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)", document.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            resolved = (document.parent / target).resolve()
            assert resolved.is_relative_to(root) and resolved.exists(), f"{document.name} links to {target}"


def _main(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    out, err = capsys.readouterr()
    return exited.value.code, out, err


def test_usage_errors_are_one_line_with_the_fix_and_exit_2(capsys, tmp_path):
    code, _, err = _main(capsys, "retrain", "--bogus")
    assert (code, err) == (2, "error: No such option '--bogus'; see `appsim retrain --help`\n")
    code, _, err = _main(capsys, "retrain", "--store", str(tmp_path), "--param", "seed=-1")
    assert code == 2 and err.startswith("error: invalid --param: seed=-1") and err.count("\n") == 1
    code, _, err = _main(capsys, "runs", "show", "nope", "--store", str(tmp_path))
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1


def test_a_missing_extra_names_the_extra_not_a_traceback(capsys, monkeypatch):
    for module in [m for m in sys.modules if m == "boto3" or m.startswith(("boto3.", "pipelines.aws"))]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, "boto3", None)  # what an install without the `aws` extra looks like
    code, _, err = _main(capsys, "pipeline", "definition")
    assert code == 1
    assert err == "error: this command needs the `aws` extra (boto3 is not installed): pip install 'appsim[aws]'\n"


def test_missing_aws_credentials_are_one_line_naming_the_fix(capsys, monkeypatch, tmp_path):
    set_aws_env(monkeypatch, tmp_path)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role to find either
    code, _, err = _main(capsys, "schedule", "show")
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("error: Unable to locate credentials") and "aws configure" in err


def test_version_comes_from_the_package_metadata(capsys):
    from importlib.metadata import version

    main(["--version"])
    assert capsys.readouterr().out == f"appsim {version('appsim')}\n"


def test_only_the_cli_package_parses_command_lines():
    import ast

    root = README.parent
    offenders = []
    for package in ("pipelines", "steps", "models", "evaluation", "serving"):
        for path in sorted((root / package).rglob("*.py")):
            if path.is_relative_to(root / "pipelines" / "cli"):
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                offenders += [f"{path.relative_to(root)} imports {n}" for n in names if n.split(".")[0] == "click"]
    assert offenders == []


def test_listing_the_commands_imports_nothing_heavy():
    import subprocess

    probe = ("import sys; from pipelines.cli import main; main(['--help']); "
             "print(sorted(m for m in ('numpy', 'pandas', 'faiss', 'pydantic', 'scipy', 'boto3', 'fastapi', 'yaml') "
             "if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          cwd=README.parent, check=True)
    assert proc.stdout.splitlines()[-1] == "[]"
