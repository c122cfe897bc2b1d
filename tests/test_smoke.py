import torch

import qgfd_hf


def test_import_and_fast_equals_reference():
    q, k, v = (torch.randn(1, 2, 5, 4, dtype=torch.float64) for _ in range(3))
    a = qgfd_hf.qgfd_attention(q, k, v, steps=2)
    b = qgfd_hf.qgfd_attention_reference(q, k, v, steps=2)
    torch.testing.assert_close(a, b)
