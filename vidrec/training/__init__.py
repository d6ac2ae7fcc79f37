"""Training: data in, model bundle out (pipeline); tuning on validation (tune); the
gated periodic retrain (retrain) and the online MF fold-in (foldin)."""
