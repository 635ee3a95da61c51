"""`python -m mlxspec`: the same as the `mlxspec` command."""

from .main import main

main()
