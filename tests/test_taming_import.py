"""`halluscope import-taming`: a checkpoint built from taming's own modules imports to a
tokenizer whose tokens and decodings equal taming's; bad checkpoints are refused clearly and
never run code."""

import argparse
import contextlib
import io
import pickle
from pathlib import Path

import pytest
import torch
import yaml
from conftest import Exploit
from taming.modules.diffusionmodules.model import Decoder, Encoder
from taming.modules.vqvae.quantize import GumbelQuantize, VectorQuantizer2

from halluscope.cli import main
from halluscope.errors import UserError
from halluscope.tokenizers.load import load_tokenizer
from halluscope.tokenizers.taming_import import import_taming

DDCONFIG = dict(double_z=False, z_channels=16, resolution=32, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2],
                num_res_blocks=1, attn_resolutions=[16], dropout=0.0)
N_EMBED, EMBED_DIM = 64, 16


class Taming(torch.nn.Module):
    """taming's VQModel, assembled from its modules (taming.models cannot be imported here)."""

    def __init__(self, gumbel: bool = False):
        super().__init__()
        with contextlib.redirect_stdout(io.StringIO()):
            self.encoder, self.decoder = Encoder(**DDCONFIG), Decoder(**DDCONFIG)
        if gumbel:
            self.quantize = GumbelQuantize(DDCONFIG["z_channels"], EMBED_DIM, n_embed=N_EMBED)
        else:
            self.quantize = VectorQuantizer2(N_EMBED, EMBED_DIM, beta=0.25)
        self.quant_conv = torch.nn.Conv2d(DDCONFIG["z_channels"], EMBED_DIM, 1)
        self.post_quant_conv = torch.nn.Conv2d(EMBED_DIM, DDCONFIG["z_channels"], 1)
        self.loss = torch.nn.Module()  # what a real checkpoint carries beside the model
        self.loss.discriminator = torch.nn.Conv2d(3, 4, 3)


def write_taming(tmp_path: Path, model: Taming, target="taming.models.vqgan.VQModel", state_dict=None) -> tuple[Path, Path]:
    config = tmp_path / "model.yaml"
    config.write_text(yaml.safe_dump({"model": {
        "base_learning_rate": 4.5e-6, "target": target,
        "params": {"embed_dim": EMBED_DIM, "n_embed": N_EMBED, "ddconfig": DDCONFIG,
                   "lossconfig": {"target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
                                  "params": {"disc_start": 10000}}}}}))
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": state_dict if state_dict is not None else model.state_dict(), "epoch": 3,
                "global_step": 1200, "hyper_parameters": argparse.Namespace(embed_dim=EMBED_DIM, lr=4.5e-6)}, ckpt)
    return config, ckpt


def taming_model(seed: int = 0, gumbel: bool = False) -> Taming:
    torch.manual_seed(seed)
    model = Taming(gumbel).eval()
    # A trained-looking codebook (codes at encoder outputs): taming initializes it to a tiny
    # range, so every latent would pick the same few codes and token order would go untested.
    with torch.no_grad():
        z = model.quant_conv(model.encoder(torch.rand(1, 3, 32, 32) * 2 - 1)).flatten(2)[0].T  # (256, D)
        (model.quantize.embed if gumbel else model.quantize.embedding).weight.copy_(z[torch.randperm(len(z))[:N_EMBED]])
    return model


def test_imported_checkpoint_matches_taming_modules(tmp_path):
    ref = taming_model()
    config, ckpt = write_taming(tmp_path, ref)
    assert main(["import-taming", "--config", str(config), "--ckpt", str(ckpt), "--out", str(tmp_path / "vq")]) == 0
    tok = load_tokenizer(tmp_path / "vq")
    assert (tok.kind, tok.grid, tok.vocab_size, tok.resolution) == ("image", (16, 16), N_EMBED, 32)

    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        # taming's path: VQModel.encode, then decode_code's get_codebook_entry + VQModel.decode
        h = ref.quant_conv(ref.encoder(x))
        quant, _, (_, _, idx) = ref.quantize(h)
        ref_tokens = idx.reshape(3, 16, 16)
        ref_from_code = ref.decoder(ref.post_quant_conv(ref.quantize.get_codebook_entry(idx.flatten(), (3, 16, 16, EMBED_DIM))))
        ref_forward = ref.decoder(ref.post_quant_conv(quant))
        tokens = tok.encode(x)
        decoded = tok.decode(tokens)
        features = tok.features(x)
    assert tokens.dtype == torch.long and len(tokens.unique()) > 10
    assert torch.equal(tokens, ref_tokens)
    assert torch.equal(features, h)
    assert torch.equal(decoded, ref_from_code)
    torch.testing.assert_close(decoded, ref_forward, rtol=1e-5, atol=1e-5)  # z + (z_q - z) rounds
    assert "loss.discriminator.weight" not in load_tokenizer(tmp_path / "vq").state_dict()


def test_gumbel_checkpoint_imports_with_argmax_tokens(tmp_path):
    ref = taming_model(gumbel=True)
    config, ckpt = write_taming(tmp_path, ref, target="taming.models.vqgan.GumbelVQ")
    tok = import_taming(config, ckpt, tmp_path / "vq")
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        logits = ref.quantize.proj(ref.quant_conv(ref.encoder(x)))
        one_hot = torch.nn.functional.one_hot(logits.argmax(1), N_EMBED).permute(0, 3, 1, 2).float()
        z_q = torch.einsum("bnhw,nd->bdhw", one_hot, ref.quantize.embed.weight)
        assert torch.equal(tok.encode(x), logits.argmax(1))
        torch.testing.assert_close(tok.decode(tok.encode(x)), ref.decoder(ref.post_quant_conv(z_q)))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("zip_format", [True, False])
def test_malicious_checkpoint_is_refused_and_never_runs(tmp_path, capsys, zip_format):
    config, _ = write_taming(tmp_path, taming_model())
    marker = tmp_path / "pwned.txt"
    evil = tmp_path / "evil.ckpt"
    payload = {"state_dict": taming_model().state_dict(), "callbacks": Exploit(str(marker))}
    if zip_format:
        torch.save(payload, evil)
    else:
        evil.write_bytes(pickle.dumps(payload))
    code = main(["import-taming", "--config", str(config), "--ckpt", str(evil), "--out", str(tmp_path / "vq")])
    assert code == 2
    err = capsys.readouterr().err
    assert "refusing checkpoint" in err and err.count("\n") == 1
    assert not marker.exists()
    assert not (tmp_path / "vq").exists()


def test_wrong_shape_and_missing_key_are_named(tmp_path):
    ref = taming_model()
    sd = ref.state_dict()
    sd["decoder.conv_in.weight"] = torch.zeros(5, 5, 3, 3)
    config, ckpt = write_taming(tmp_path, ref, state_dict=sd)
    with pytest.raises(UserError, match=r"`decoder.conv_in.weight` has shape \(5, 5, 3, 3\), expected \(64, 16, 3, 3\)"):
        import_taming(config, ckpt, tmp_path / "vq")

    sd = ref.state_dict()
    del sd["quantize.embedding.weight"]
    config, ckpt = write_taming(tmp_path, ref, state_dict=sd)
    with pytest.raises(UserError, match="missing weight `quantize.embedding.weight`"):
        import_taming(config, ckpt, tmp_path / "vq")

    sd = {**ref.state_dict(), "extra.bias": torch.zeros(2)}
    config, ckpt = write_taming(tmp_path, ref, state_dict=sd)
    with pytest.raises(UserError, match="unexpected weight `extra.bias`"):
        import_taming(config, ckpt, tmp_path / "vq")
    assert not (tmp_path / "vq").exists()


def test_bad_yaml_gives_one_clear_line(tmp_path, capsys):
    _, ckpt = write_taming(tmp_path, taming_model())
    bad = tmp_path / "bad.yaml"
    for text, message in [("model: [unclosed", "not valid YAML"),
                          ("model:\n  params: {}\n", "no `model.params.ddconfig`"),
                          ("model:\n  target: taming.models.vqgan.EMAVQ\n  params:\n    ddconfig: {}\n", "not supported")]:
        bad.write_text(text)
        assert main(["import-taming", "--config", str(bad), "--ckpt", str(ckpt), "--out", str(tmp_path / "o")]) == 2
        assert message in capsys.readouterr().err
