"""The Hugging Face transformers backend: loading, sessions, row-stable numerics."""
