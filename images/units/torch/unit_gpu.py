"""On a GPU: a kernel runs on every visible device and agrees with the CPU. Without one: skip."""

import torch

if not torch.cuda.is_available():
    print(
        f"no GPU visible (torch {torch.__version__}, CUDA {torch.version.cuda}): GPU branch skipped"
    )
else:
    x = torch.randn(256, 256)
    expected = x @ x
    for index in range(torch.cuda.device_count()):
        device = torch.device("cuda", index)
        got = (x.to(device) @ x.to(device)).cpu()
        # A kernel actually ran: "no kernel image" and driver errors surface here, not at import.
        assert torch.allclose(got, expected, rtol=1e-3, atol=1e-3), (
            f"GPU {index} disagrees with the CPU"
        )
        print(
            f"GPU {index} {torch.cuda.get_device_name(index)} sm_{''.join(map(str, torch.cuda.get_device_capability(index)))}: matmul ok"
        )
