"""Tests run inside the onnxruntime-training environment (a package, so its conftest is not `conftest`)."""
