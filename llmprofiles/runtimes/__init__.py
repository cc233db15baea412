"""Engine runtimes (AOTInductor, torch.compile, TensorRT) behind the Engine boundary; ``load.py`` dispatches."""
