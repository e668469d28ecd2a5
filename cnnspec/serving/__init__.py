"""Serving and scale-out inference: `cnnspec serve` (Open Inference Protocol), Triton model repositories, Ray.

The web stack (FastAPI, uvicorn) and Ray are optional extras, imported only inside the functions that need them.
"""
