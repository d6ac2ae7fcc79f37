"""vidrec: video recommendations (MF + two-tower candidates, content scoring, business rules)."""

__version__ = "0.1.0"
