"""The evaluation harness: protocols, metrics, baselines and recall channels on real behaviour."""
