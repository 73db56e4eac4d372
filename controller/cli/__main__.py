"""`python -m controller.cli`: what the `wakegate` script runs (tests and workers use it)."""

from .args import main

main()
