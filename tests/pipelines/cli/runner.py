"""Run `appsim` in this process, as the tests of every command group do."""

from click.testing import CliRunner

from pipelines.cli import cli


def run(*args, expect=0, stdout_only=False):
    """`appsim ARGS` through the click tree (errors translated as for a user); asserts the exit code and
    returns what it printed (stdout and stderr interleaved, or stdout alone)."""
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == expect, result.output
    return result.stdout if stdout_only else result.output
