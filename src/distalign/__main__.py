"""``python -m distalign``: the command line (as ``distalign``)."""

from distalign.cli import main

main()
