"""Virtual clients: pure local-SGD training (sequential and vmap) and the Ray actor pool."""
