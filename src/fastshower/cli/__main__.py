"""``python -m fastshower.cli``."""

from fastshower.cli import main

main()
