"""Trained drafting heads that read the target's hidden states (Medusa)."""
