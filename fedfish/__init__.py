"""FedFish core: Fisher-induced sparse masks for federated learning.

Pure torch + numpy (flwr-datasets and pandas only inside ``fedfish.data``);
no Flower framework import, so every piece is testable without a server.
"""
