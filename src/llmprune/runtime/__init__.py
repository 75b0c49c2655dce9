"""Sparse inference: linear layers that compute from the bitmask + packed-values layout."""
