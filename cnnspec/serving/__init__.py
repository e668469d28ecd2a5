"""Serving and scale-out inference: `cnnspec serve` (Open Inference Protocol), Triton model repositories.

The web stack (FastAPI, uvicorn) is an optional extra, imported only inside the functions that need them.
"""
