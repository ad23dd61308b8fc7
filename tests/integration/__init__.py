"""Integration tests: real kfp.local runs, DVC with a local-directory remote, Make."""
