"""Quantisation: k-means weight sharing (kmeans.py, share.py) and binary weights (binary.py)."""
