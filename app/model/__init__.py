"""The model side: what a bundle's request schema and predictor are, with no server around them (pure)."""
