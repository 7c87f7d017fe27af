"""Prompt sets: built-in and local sources, tasks, and chat-template encoding."""
