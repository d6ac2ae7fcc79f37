"""Data directory contract (DESIGN.md §7): loading with validation, importers, generator."""
