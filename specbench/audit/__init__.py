"""Exactness audits of decoding methods (``specbench audit``)."""
