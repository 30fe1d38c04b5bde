"""Trust-chain validator: the service process (``worker``) and the pure chain
builder (``chain``)."""
