"""Model backends behind one session interface (see :mod:`specbench.models.base`)."""
