"""FedFish core: Fisher-induced sparse masks for federated learning.

torch + numpy, with pandas for byte logs and label histograms and flwr-datasets (the data
toolkit, not the framework) for partitions and file datasets; no Flower framework import, so
every piece is testable without a server.
"""
