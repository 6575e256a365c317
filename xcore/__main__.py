"""`python -m xcore` is the `xcore` command."""

from cli import main

main()
