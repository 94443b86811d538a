"""SkyMask (Yan et al., ECCV 2024): learnable parameter-level masks, trained on root data, clustered."""
