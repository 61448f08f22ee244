"""`dutrain offline`: sample a checkpoint, score the samples, learn from the ranking (DPO)."""
