"""Student → Core ML / ExecuTorch / ONNX (+ .ort) exports, with quantization per target and a parity gate."""
