"""Training: the backward walk, loss, optimizers, the train-step ONNX program, the loop and checkpoints."""
