"""Federated learning: data, models, local training, the update contract, aggregation rules.

Knows no HTTP and no SQL: it reads and writes tensors through the blob store API only.
"""
