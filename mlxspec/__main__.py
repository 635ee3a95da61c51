"""`python -m mlxspec`: the same as the `mlxspec` command."""

from .main import main

if __name__ == "__main__":
    main()
