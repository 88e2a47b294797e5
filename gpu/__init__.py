"""numbeam.gpu: device discovery and per-device worker nodes (a later issue). Empty until then."""
