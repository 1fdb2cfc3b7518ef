"""Building the command line's parser (``medassist --help``, every quick command) loads no
heavy library: the sub-command modules import those in the functions that run them."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

HEAVY = ("sqlalchemy", "alembic", "torch", "numpy", "pydicom", "gdcm", "gradio", "ray",
         "httpx")


def test_help_imports_no_heavy_library() -> None:
    # the console script and ``python -m medassist`` both call medassist.cli.main
    code = ("import sys\n"
            "from medassist.cli import main\n"
            "try:\n"
            "    main(['--help'])\n"
            "except SystemExit as exc:\n"
            "    assert exc.code == 0, exc.code\n"
            "else:\n"
            "    raise AssertionError('--help did not exit')\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "usage: medassist" in res.stdout
    assert res.stdout.splitlines()[-1] == "[]"


def test_parser_constants_agree_with_their_modules() -> None:
    """The parser's defaults come from light modules; the heavy ones use the same values."""
    import medassist.audit
    import medassist.audit.chain
    import medassist.drafting
    import medassist.model_cli

    # vars(): model_cli and audit.chain import these names without re-exporting them, and
    # their own bindings are what is checked
    assert vars(medassist.model_cli)["DEFAULT_CHECKPOINT"] is medassist.drafting.DEFAULT_CHECKPOINT
    # the shipped checkpoint, whatever the working directory
    assert medassist.drafting.DEFAULT_CHECKPOINT.is_absolute()
    assert (medassist.drafting.DEFAULT_CHECKPOINT / "model.safetensors").is_file()
    assert medassist.model_cli.ModelCLIError is medassist.drafting.ModelCLIError
    assert medassist.audit.DEFAULT_CHAIN == vars(medassist.audit.chain)["DEFAULT_CHAIN"] == "main"
    assert medassist.audit.record is medassist.audit.chain.record
