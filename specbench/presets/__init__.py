"""Presets: the pydantic schema, file formats, and importing other tools' configs."""
