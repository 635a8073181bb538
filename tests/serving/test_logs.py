"""Server logs: text on a terminal, JSON lines otherwise, APPSIM_LOG_FORMAT overriding either."""

import io
import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest

from serving.logs import LogFormatError, log_config, log_format

ROOT = Path(__file__).parents[2]
# What `appsim serve` does with the config before uvicorn starts, then one warning from the app's logger.
LOG_ONE_LINE = ("import logging.config; from serving.logs import log_config; logging.config.dictConfig(log_config()); "
                "logging.getLogger('appsim.serving').warning('feedback logging is off')")
TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}Z WARNING appsim\.serving \[\d+\] feedback logging is off$")


def logged_line(stderr_is_a_terminal: bool, environ: dict[str, str]) -> str:
    """The line a real process writes to its stderr, a pseudo-terminal or a pipe."""
    env = {k: v for k, v in os.environ.items() if k != "APPSIM_LOG_FORMAT"} | environ | {"PYTHONPATH": str(ROOT)}
    if not stderr_is_a_terminal:
        run = subprocess.run([sys.executable, "-c", LOG_ONE_LINE], env=env, capture_output=True, text=True, timeout=60)
        return run.stderr.strip()
    controller, terminal = pty.openpty()
    try:
        subprocess.run([sys.executable, "-c", LOG_ONE_LINE], env=env, stderr=terminal, timeout=60, check=True)
        return os.read(controller, 65536).decode().strip()
    finally:
        os.close(controller)
        os.close(terminal)


def test_text_on_a_terminal_json_through_a_pipe():
    assert TEXT_LINE.match(logged_line(True, {}))
    entry = json.loads(logged_line(False, {}))
    assert (entry["level"], entry["logger"], entry["message"]) == ("warning", "appsim.serving", "feedback logging is off")


def test_the_environment_overrides_the_terminal_check():
    assert json.loads(logged_line(True, {"APPSIM_LOG_FORMAT": "json"}))["level"] == "warning"
    assert TEXT_LINE.match(logged_line(False, {"APPSIM_LOG_FORMAT": "text"}))


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_format_rules():
    assert log_format({}, Terminal()) == "text"
    assert log_format({}, io.StringIO()) == "json"
    assert log_format({"APPSIM_LOG_FORMAT": " JSON "}, Terminal()) == "json"
    assert log_format({"APPSIM_LOG_FORMAT": "text"}, io.StringIO()) == "text"
    assert log_config("debug", "text")["formatters"]["appsim"]["()"] == "serving.logs.TextFormatter"


def test_an_unknown_format_names_the_choices():
    with pytest.raises(LogFormatError, match=r"APPSIM_LOG_FORMAT='yaml' is not a log format: set it to json or text"):
        log_format({"APPSIM_LOG_FORMAT": "yaml"}, io.StringIO())
