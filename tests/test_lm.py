"""The language-model workflow (issue 17, part 4): spectorch.nn.GPT (GPT-2's layout,
checked against HuggingFace's GPT2LMHeadModel where transformers is installed), the
standard library's source as byte-level text, `spectorch lm train` resumed exactly,
and `spectorch density CHECKPOINT --blocks` from the command line."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import pytest
import torch
from test_cli import run

from spectorch.curvature import CausalLM, HessianOperator, parameter_blocks
from spectorch.data import byte_tokens, python_source, text_windows
from spectorch.experiments import lm
from spectorch.nn import GPT, GPTConfig, hf_gpt2

F64 = torch.float64
SMALL = GPTConfig(vocab_size=50, n_positions=12, n_embd=16, n_layer=2, n_head=2)


def test_python_source_is_the_standard_library_in_file_order():
    root = Path(sysconfig.get_paths()["stdlib"])
    first = sorted(root.glob("*.py"))[0].read_bytes()
    text = python_source(1000)
    assert len(text) == 1000 and first.startswith(text[: min(1000, len(first))])
    tokens = byte_tokens(text)
    assert tokens.dtype == torch.long and bytes(tokens.to(torch.uint8).tolist()) == text
    w = text_windows(tokens, 64)
    assert w.shape == (15, 64) and torch.equal(w[1], tokens[64:128])
    with pytest.raises(ValueError, match="length must be a positive int"):
        text_windows(tokens, 0)
    with pytest.raises(ValueError, match="make no window"):
        text_windows(tokens[:10], 64)
    with pytest.raises(ValueError, match="limit must be a positive int"):
        python_source(0)


def test_gpt_checks_its_config_and_inputs():
    with pytest.raises(ValueError, match="n_embd must be a multiple of n_head"):
        GPTConfig(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="n_positions=12"):
        GPT(SMALL)(torch.zeros(1, 13, dtype=torch.long))
    with pytest.raises(ValueError, match="arch must be one of"):
        lm.LMConfig(arch="gpt")
    with pytest.raises(ValueError, match="width must be a multiple of heads"):
        lm.LMConfig(width=30, heads=4)


def test_gpt_padding_leaves_the_real_tokens_alone():
    torch.manual_seed(0)
    model = GPT(SMALL).to(F64).eval()
    ids = torch.randint(0, 50, (2, 12))
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0  # right padding
    full = model(ids)
    padded = model(ids, attention_mask=mask)
    torch.testing.assert_close(padded[0, :7], full[0, :7], rtol=0, atol=1e-13)
    torch.testing.assert_close(padded[1], full[1], rtol=0, atol=1e-13)
    assert torch.isfinite(padded).all()


def test_gpt_equals_huggingface_gpt2():
    """The same weights give the same logits as HuggingFace's GPT2LMHeadModel (whose
    Conv1D weights are the transposes of nn.Linear's), and the same names."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    ours = GPT(SMALL).to(F64).eval()
    hf = hf_gpt2(SMALL).to(F64).eval()
    assert isinstance(hf, transformers.GPT2LMHeadModel)
    names = dict(ours.named_parameters())
    assert set(names) == set(dict(hf.named_parameters()))

    def conv1d(name):  # HuggingFace's Conv1D keeps weights as (in, out)
        return name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight"))

    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.copy_(names[name].T if conv1d(name) else names[name])
    ids = torch.randint(0, 50, (3, 12))
    torch.testing.assert_close(hf(ids).logits, ours(ids), rtol=0, atol=1e-12)
    data = [ids]
    v = torch.randn(sum(p.numel() for p in ours.parameters()), dtype=F64)
    hv = HessianOperator(ours, CausalLM(), data).matvec(v)
    # the same product in HuggingFace's parameter layout
    w, i = [], 0
    for name, p in ours.named_parameters():
        piece = v[i : i + p.numel()].view_as(p)
        hp = dict(hf.named_parameters())[name]
        w.append((piece.T if conv1d(name) else piece).reshape(-1))
        i += p.numel()
    hw = HessianOperator(hf, CausalLM(), data).matvec(torch.cat(w))
    back, i = [], 0
    for name, p in ours.named_parameters():
        hp = dict(hf.named_parameters())[name]
        piece = hw[i : i + p.numel()].view_as(hp)
        back.append((piece.T if conv1d(name) else piece).reshape(-1))
        i += p.numel()
    torch.testing.assert_close(torch.cat(back), hv, rtol=1e-10, atol=1e-12)


TINY = dict(layers=1, heads=2, width=16, context=16, batch_size=4, warmup=2, text_bytes=20_000)


def test_lm_run_resumes_exactly(tmp_path):
    config = lm.LMConfig(steps=4, **TINY)
    whole = lm.run(tmp_path / "a", config, checkpoint_every=2, device="cpu", progress=False)
    lm.run(tmp_path / "b", config, checkpoint_every=2, device="cpu", progress=False)
    (tmp_path / "b" / "step_0000004.pt").unlink()  # killed after step 2's checkpoint
    resumed = lm.run(tmp_path / "b", config, checkpoint_every=2, device="cpu", progress=False)
    assert resumed.resumed_from == 2 and resumed.losses == whole.losses
    a, _ = lm.load_lm_checkpoint(tmp_path / "a")
    b, state = lm.load_lm_checkpoint(tmp_path / "b")
    assert state["step"] == 4
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q), name
    with pytest.raises(ValueError, match="heads"):  # another run's directory is refused
        lm.run(tmp_path / "a", lm.LMConfig(steps=4, **{**TINY, "heads": 4}), progress=False)
    # the density problem: the first windows, its products independent of the batching
    one = lm.density_problem(tmp_path / "a", sequences=4, batch_size=4)
    two = lm.density_problem(tmp_path / "a", sequences=4, batch_size=1)
    assert one["problem"]["step"] == 4 and len(two["data"]) == 4
    model = one["model"].to(F64)
    v = torch.randn(sum(p.numel() for p in model.parameters()), dtype=F64)
    torch.testing.assert_close(
        HessianOperator(model, one["loss"], one["data"]).matvec(v),
        HessianOperator(two["model"].to(F64), two["loss"], two["data"]).matvec(v),
        rtol=1e-10,
        atol=1e-12,
    )
    blocks = parameter_blocks(model, {"attn": "transformer.h.*.attn.*"})
    size = sum(model.get_parameter(n).numel() for n in blocks["attn"])
    assert size == 16 * 48 + 48 + 16 * 16 + 16


def test_lm_run_tracks_the_preconditioned_sharpness_and_resumes_it(tmp_path):
    from spectorch.curvature import PreconditionedOperator, adam_preconditioner
    from spectorch.linalg import top_eigenpairs

    config = lm.LMConfig(steps=4, **TINY)
    kw = dict(checkpoint_every=2, device="cpu", progress=False, sharpness_every=2,
              sharpness_sequences=4, sharpness_preconditioned=True)  # fmt: skip
    lm.run(tmp_path / "a", config, **kw)
    lm.run(tmp_path / "b", config, **kw)
    (tmp_path / "b" / "step_0000004.pt").unlink()  # killed after step 2's checkpoint
    lm.run(tmp_path / "b", config, **kw)
    a, b = ((tmp_path / d / "sharpness.csv").read_text().splitlines() for d in "ab")
    assert a[0].startswith("step,eig_1,") and len(a) == 3  # steps 2 and 4, no step 0
    strip = [[x for i, x in enumerate(line.split(",")) if i != a[0].split(",").index(
        "cpu_seconds")] for line in (*a, *b)]  # fmt: skip
    assert strip[:3] == strip[3:]  # the resumed run's rows are the uninterrupted run's
    # the last row is λ_max(P^-1/2 H P^-1/2) at the final weights and AdamW's state,
    # to the float32 network's accuracy
    model, state = lm.load_lm_checkpoint(tmp_path / "a")
    model = model.to(F64)  # the reference in float64; the tracker's model is float32
    opt = torch.optim.AdamW(lm._decay_groups(model, config.weight_decay), lr=config.lr,
                            betas=(0.9, 0.95))  # fmt: skip
    opt.load_state_dict(state["state"]["optimizer"])
    train, _, _ = lm.corpus(config)
    H = HessianOperator(model, CausalLM(), [train[:4]])
    op = PreconditionedOperator(H, adam_preconditioner(opt, model.named_parameters()))
    last = dict(zip(a[0].split(","), a[2].split(","), strict=True))
    assert int(last["step"]) == 4 and last["converged"] == "1"
    exact = float(top_eigenpairs(op, 1, seed=1, tol=1e-10).values[0])
    assert float(last["eig_1"]) == pytest.approx(exact, rel=1e-3)
    with pytest.raises(ValueError, match="without sharpness_every"):
        lm.run(tmp_path / "d", config, progress=False, sharpness_preconditioned=True)
    with pytest.raises(ValueError, match="sharpness_sequences"):
        lm.run(tmp_path / "c", config, progress=False, sharpness_every=1,
               sharpness_sequences=10**6)  # fmt: skip


def test_lm_train_then_density_of_a_checkpoint_from_the_command_line(tmp_path):
    out = tmp_path / "run"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    r = run("lm", "train", "--out", str(out), "--steps", "2", "--checkpoint-every", "1",
            "--sharpness-every", "2", "--sharpness-sequences", "4", "--quiet",
            *flags)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "held-out" in r.stdout and f"spectorch density {out}" in r.stdout
    rows = (out / "sharpness.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows] == ["step", "0", "2"]  # the Hessian's, from 0
    r = run("lm", "train", "--out", str(tmp_path / "x"), "--preconditioned-sharpness")
    assert r.returncode == 2 and "needs --sharpness-every" in r.stderr
    dens = tmp_path / "density"
    blocks = ("attn=transformer.h.*.attn.*", "mlp=transformer.h.*.mlp.*")
    r = run("density", str(out / "step_0000002.pt"), "--steps", "8", "--draws", "2",
            "--sequences", "4", "--blocks", *blocks, "--out", str(dens), "--quiet")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert (dens / "blocks.png").stat().st_size > 10_000
    summary = json.loads((dens / "blocks.json").read_text())
    assert set(summary["blocks"]) == {"attn", "mlp"} and summary["js_distance_mean"] > 0
    manifest = json.loads((dens / "manifest.json").read_text())
    assert manifest["problem"]["lm_checkpoint"] == "step_0000002.pt"
    # another checkpoint's density is never resumed from this one's directory
    r = run("density", str(out / "step_0000001.pt"), "--steps", "8", "--draws", "2",
            "--sequences", "4", "--out", str(dens), "--quiet")  # fmt: skip
    assert r.returncode == 2 and "problem.lm_checkpoint" in r.stderr
    r = run("density", str(tmp_path), "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "not a checkpoint or run directory" in r.stderr
