"""``python -m specbench`` is the ``specbench`` console script."""

from specbench.cli.main import main

main()
