"""Prompt data shipped with specbench (see SOURCES.md for origin and licences)."""
