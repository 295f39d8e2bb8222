"""Several data holders build one learnware together with Flower (DESIGN §8).

``config`` reads ``FED.toml``; ``client_app`` is the holder's ClientApp (LoRA training on
its own texts, its DP spec on request); ``server_app`` runs FedAvg over the adapter tensors,
merges the holders' specs weighted by n, signs and submits; ``run`` starts it all on one
machine with Flower's simulation engine (Ray).
"""
