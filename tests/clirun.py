"""Running the CLI in-process from tests."""

from typer.testing import CliRunner

from freshsid.cli import app

runner = CliRunner()


def invoke(*args):
    """Run ``freshsid ARGS`` and insist it succeeded; the result's output is the test's to read."""
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result
