"""An ASGI app whose consumers fail on purpose (tests of crash safety)."""
