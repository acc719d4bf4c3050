"""``run(capsys, *argv)``: the ``polyak`` CLI in-process; (exit code, stdout, stderr)."""

import pytest

from polyak.cli import main


def run(capsys, *argv):
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    out = capsys.readouterr()
    return info.value.code, out.out, out.err
