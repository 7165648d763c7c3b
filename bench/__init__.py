"""``make bench``: what otel-netlat costs, measured side by side in one run (see README.md)."""
