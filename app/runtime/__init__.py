"""The running server: its state, the model being served and how it is loaded, refreshed and admitted work."""
