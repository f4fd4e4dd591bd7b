"""adapters layer of p2pmodel (see docs/architecture.md)."""
