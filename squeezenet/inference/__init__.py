"""Fast inference: backends behind one interface, export, quantization, benchmarks."""
