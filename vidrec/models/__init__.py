"""Models: matrix factorization, two-tower network, content similarity, the hybrid."""
