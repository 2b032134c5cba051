"""Process-level services: compute devices (one GPU per job), file locks, logging."""
