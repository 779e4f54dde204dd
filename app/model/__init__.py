"""The model side: what a bundle's request schema is, with no server around them (pure)."""
