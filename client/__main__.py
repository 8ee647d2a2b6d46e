"""`python -m client` runs the `kmlx` CLI (handy before it is installed)."""

from client.cli import main

main()
