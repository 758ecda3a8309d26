"""shard layer of shardemb; see docs/ARCHITECTURE.md."""
