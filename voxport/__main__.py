"""`python -m voxport` is the `voxport` command (tests use it to run a build they can kill)."""

from voxport.cli import main

main()
