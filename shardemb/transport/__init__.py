"""transport layer of shardemb; see docs/ARCHITECTURE.md."""
