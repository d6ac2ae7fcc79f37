"""Gateway: the public Recommend / LogEvents / GetStats entry point."""
