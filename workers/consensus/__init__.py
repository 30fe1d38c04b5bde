"""Consensus: the tally (batches, counts, certifies), the verifier (judges, votes),
and their pure rules: ballot rounds (``ballot``), one verdict (``judge``) and the
verdict state a verdict is judged at (``verdict_state``)."""
