"""specbench's built-in decoding methods, registered through the ``specbench.methods`` group."""
