"""``python -m fedpeft.cli``: the ``fedpeft`` command (tests and node launchers start it this way)."""

from fedpeft.cli import main

main()
