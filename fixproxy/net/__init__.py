"""trio plumbing that knows no FIX: socket streams, the TLS client and its pins, tiny HTTP."""
