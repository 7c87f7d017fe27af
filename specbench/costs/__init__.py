"""What a step costs: the ledger's phase split in records, and unit costs probed once per run."""
