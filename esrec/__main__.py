"""`python -m esrec` runs the command line."""

from esrec.cli import main

main()
