"""Decoding building blocks: logits processing, drafters, verifiers and the shared loop."""
