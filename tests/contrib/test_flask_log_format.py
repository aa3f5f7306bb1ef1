"""``flask runledger worker --log-format``, and ``RUNLEDGER_LOG_FORMAT`` in the app's config."""

from __future__ import annotations

from flask import Flask

from runledger.contrib.flask import Runledger


def test_flask_runledger_worker_lists_log_format_in_its_help(dsn: str) -> None:
    app = Flask("worker_log_format_help")
    app.config["RUNLEDGER_DATABASE_URL"] = dsn
    ext = Runledger(app)
    try:
        result = app.test_cli_runner().invoke(args=["runledger", "worker", "--help"])
    finally:
        ext.close(app)

    assert result.exit_code == 0, result.output
    assert "--log-format [text|json]" in result.output


def test_flask_runledger_worker_refuses_a_bad_log_format_in_the_config(dsn: str) -> None:
    app = Flask("worker_bad_log_format")
    app.config["RUNLEDGER_DATABASE_URL"] = dsn
    app.config["RUNLEDGER_LOG_FORMAT"] = "xml"
    ext = Runledger(app)
    try:
        result = app.test_cli_runner().invoke(args=["runledger", "worker"])
    finally:
        ext.close(app)

    assert result.exit_code == 1
    assert "RUNLEDGER_LOG_FORMAT" in result.output
    assert "text or json" in result.output
