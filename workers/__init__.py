"""Worker processes (verifier, tally) and the pure domain logic beside them."""
