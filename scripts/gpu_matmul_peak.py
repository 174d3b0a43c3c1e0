#!/usr/bin/env python3
"""The GPU's measured bf16 matrix rate, for the MFU column of scripts/gpu_check.sh's table.

Prints one JSON line: {"check": "device", "name", "bf16_tflops" (best of 20 8192^3 bf16 matmuls,
f32 accumulation), "datasheet_bf16_tflops" (dense, from the table below by device name)}.
"""

import json
import time

import torch

# Dense bf16 tensor-core peaks from NVIDIA's datasheets (TFLOP/s, without sparsity).
DATASHEET_BF16 = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}


def main() -> None:
    name = torch.cuda.get_device_name()
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(20):
        start = time.perf_counter()
        a @ b
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    datasheet = next((v for k, v in DATASHEET_BF16.items() if k in name), None)
    print(json.dumps({"check": "device", "name": name, "bf16_tflops": round(2 * n**3 / best / 1e12, 1),
                      "datasheet_bf16_tflops": datasheet}))


if __name__ == "__main__":
    main()
