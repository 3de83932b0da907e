"""Pure FIX: framing, parsing and encoding. Nothing here awaits or imports trio."""
