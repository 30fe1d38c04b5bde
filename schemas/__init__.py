"""The wire contract: message types, codec limits, signing bytes, identities, errors."""
