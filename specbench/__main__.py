"""``python -m specbench`` is the ``specbench`` console script."""

from specbench.cli.entry import main

main()
