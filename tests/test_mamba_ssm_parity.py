"""Our pure-PyTorch mixers against mamba_ssm's fused CUDA kernels, with shared weights.
Needs a CUDA GPU and `pip install -e ".[gpu]"`; skipped elsewhere with the reason."""
import pytest
import torch

import nanochat_core.model.mamba as M

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU (mamba_ssm's kernels are CUDA-only)", allow_module_level=True)
mamba_ssm = pytest.importorskip("mamba_ssm", reason="mamba_ssm is not installed: pip install -e '.[gpu]'")


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("L", [7, 100, 300])
def test_mamba1_matches_mamba_ssm(monkeypatch, L):
    torch.manual_seed(0)
    ours = M.Mamba1(64, d_state=16, d_conv=4, expand=2).cuda()
    ref = mamba_ssm.Mamba(64, d_state=16, d_conv=4, expand=2).cuda()
    ref.load_state_dict(ours.state_dict())  # same parameter names, strict
    x = torch.randn(2, L, 64, device="cuda")
    monkeypatch.setattr(M, "_MAMBA_SSM", False)  # force our PyTorch path for `ours`
    with torch.no_grad():
        assert rel_err(ours(x), ref(x)) <= 1e-3


@pytest.mark.parametrize("L", [7, 100, 300])
def test_mamba2_matches_mamba_ssm(monkeypatch, L):
    torch.manual_seed(0)
    ours = M.Mamba2(64, d_state=32, d_conv=4, expand=2, headdim=32, ngroups=1, chunk_size=64).cuda()
    ref = mamba_ssm.Mamba2(64, d_state=32, d_conv=4, expand=2, headdim=32, ngroups=1, chunk_size=64,
                           rmsnorm=True, norm_before_gate=False).cuda()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, L, 64, device="cuda")
    monkeypatch.setattr(M, "_MAMBA_SSM", False)
    with torch.no_grad():
        assert rel_err(ours(x), ref(x)) <= 1e-3


def test_fused_path_in_our_mixer_matches_our_pytorch_path(monkeypatch):
    # With mamba_ssm importable, our mixers switch to the fused kernels on CUDA; same weights,
    # same outputs as the pure-PyTorch path.
    torch.manual_seed(0)
    for mixer in (M.Mamba1(64).cuda(), M.Mamba2(64, d_state=32, headdim=32).cuda()):
        x = torch.randn(2, 50, 64, device="cuda")
        with torch.no_grad():
            monkeypatch.setattr(M, "_MAMBA_SSM", None)
            fused = mixer(x)
            monkeypatch.setattr(M, "_MAMBA_SSM", False)
            plain = mixer(x)
        assert rel_err(fused, plain) <= 1e-3
