"""Model folders, atomic writes and the checkpoint loader that never runs pickled code."""

import argparse
import os
import pickle
import sys
import types
from pathlib import Path

import pytest
import torch
from conftest import Exploit

from halluscope.errors import UserError
from halluscope.io import (
    atomic_path,
    find_state_dict,
    load_model_folder,
    load_untrusted_checkpoint,
    read_jsonl,
    save_model_folder,
    write_json,
)


def test_model_folder_round_trip(tmp_path):
    sd = {"w": torch.randn(3, 4), "b": torch.arange(5)}
    save_model_folder(tmp_path / "m", {"kind": "x", "n": 3}, sd)
    config, loaded = load_model_folder(tmp_path / "m")
    assert config == {"kind": "x", "n": 3}
    assert loaded.keys() == sd.keys() and all(torch.equal(loaded[k], sd[k]) for k in sd)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]


def test_model_folder_errors_are_one_line(tmp_path):
    with pytest.raises(UserError, match="model folder not found"):
        load_model_folder(tmp_path / "nope")
    save_model_folder(tmp_path / "m", {"a": 1}, {"w": torch.zeros(2)})
    (tmp_path / "m" / "model.safetensors").write_bytes(b"\x00" * 7)
    with pytest.raises(UserError, match="unreadable"):
        load_model_folder(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_model_folder(tmp_path / "m")


def test_atomic_path_keeps_old_file_when_writer_fails(tmp_path):
    target = tmp_path / "ckpt.bin"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.bin"]  # no temp file left behind


def test_lightning_style_checkpoint_loads_with_inert_hyper_parameters(tmp_path):
    sd = {"encoder.w": torch.randn(2, 2)}
    path = tmp_path / "last.ckpt"
    args = argparse.Namespace(lr=1e-4, downsample=[4, 8, 8], padding_type="replicate", name="tats",
                              sub=argparse.Namespace(n_hiddens=32), table={"a": torch.ones(2)})
    torch.save({"state_dict": sd, "epoch": 3, "hyper_parameters": {"args": args, "sos_token": 0}}, path)
    ckpt = load_untrusted_checkpoint(path)
    assert ckpt["epoch"] == 3 and ckpt["hyper_parameters"]["sos_token"] == 0
    # A Namespace's plain-data attributes are kept (TATS reads its per-axis downsample there), as data:
    # the placeholder is no argparse.Namespace and nothing of argparse ran.
    kept = ckpt["hyper_parameters"]["args"]
    assert "argparse.Namespace" in repr(kept) and not isinstance(kept, argparse.Namespace)
    assert (kept.lr, kept.downsample, kept.padding_type, kept.name, kept.sub.n_hiddens) == \
        (1e-4, [4, 8, 8], "replicate", "tats", 32)
    assert torch.equal(kept.table["a"], torch.ones(2))
    assert torch.equal(find_state_dict(ckpt)["encoder.w"], sd["encoder.w"])


@pytest.mark.parametrize("module", ["pytorch_lightning.utilities.parsing", "lightning_fabric.utilities.data"])
def test_lightning_attribute_dicts_keep_their_items(tmp_path, monkeypatch, module):
    """Lightning stores hyper-parameters as an AttributeDict (a dict subclass): the file loads,
    as a plain dict holding its items (and a Namespace inside it), and no Lightning class is built."""
    built = []

    class AttributeDict(dict):
        def __init__(self, *args, **kwargs):
            built.append(1)
            super().__init__(*args, **kwargs)

    AttributeDict.__module__, AttributeDict.__qualname__ = module, "AttributeDict"
    parts = module.split(".")
    for i in range(1, len(parts) + 1):  # the class must be importable for torch.save to name it
        monkeypatch.setitem(sys.modules, ".".join(parts[:i]), types.ModuleType("stand-in"))
    monkeypatch.setattr(sys.modules[module], "AttributeDict", AttributeDict, raising=False)
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)},
                "hyper_parameters": AttributeDict(lr=1e-4, n_layer=3, args=argparse.Namespace(downsample=[4, 8, 8]))},
               path)
    built.clear()
    hparams = load_untrusted_checkpoint(path)["hyper_parameters"]
    assert type(hparams) is dict and not built
    assert (hparams["lr"], hparams["n_layer"], hparams["args"].downsample) == (1e-4, 3, [4, 8, 8])


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # a plain pickle, on purpose
@pytest.mark.parametrize("protocol_zip", [True, False])
def test_code_running_pickle_is_refused_and_never_runs(tmp_path, protocol_zip):
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "evil.ckpt"
    payload = {"state_dict": {"w": torch.zeros(1)}, "x": Exploit(str(marker))}
    if protocol_zip:
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(UserError, match="refusing checkpoint"):
        load_untrusted_checkpoint(path)
    assert not marker.exists()


def test_damaged_checkpoints_give_clear_errors(tmp_path):
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match="empty"):
        load_untrusted_checkpoint(empty)
    good = tmp_path / "good.ckpt"
    torch.save({"w": torch.randn(100, 100)}, good)
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(UserError):
        load_untrusted_checkpoint(cut)
    with pytest.raises(UserError, match="not found"):
        load_untrusted_checkpoint(tmp_path / "missing.ckpt")


def test_find_state_dict_unwraps_and_refuses_tensorless(tmp_path):
    t = torch.ones(1)
    for wrapped in ({"w": t}, {"state_dict": {"w": t}}, {"model_state_dict": {"w": t}}):
        assert torch.equal(find_state_dict(wrapped)["w"], t)
    with pytest.raises(UserError, match="no state dict"):
        find_state_dict({"epoch": 1}, "x.ckpt")


def test_atomic_writes_get_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(umask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644


def test_read_jsonl_drops_a_line_cut_short_by_a_kill(tmp_path):
    log = tmp_path / "metrics.jsonl"
    assert read_jsonl(log) == []
    log.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
    assert read_jsonl(log) == [{"step": 1}, {"step": 2}]


@pytest.mark.parametrize("zip_format", [True, False])
def test_old_format_and_omegaconf_hyper_parameters_load_inert(tmp_path, zip_format):
    omegaconf = pytest.importorskip("omegaconf")
    path = tmp_path / "last.ckpt"
    hparams = {"cfg": omegaconf.OmegaConf.create({"lr": 1e-4}), "args": argparse.Namespace(lr=1)}
    torch.save({"state_dict": {"w": torch.ones(2)}, "hyper_parameters": hparams}, path,
               _use_new_zipfile_serialization=zip_format)
    ckpt = load_untrusted_checkpoint(path)
    assert torch.equal(find_state_dict(ckpt)["w"], torch.ones(2))
    assert "DictConfig" in repr(ckpt["hyper_parameters"]["cfg"])


def test_old_format_pickle_calling_a_builtin_is_refused_by_name(tmp_path):
    marker = tmp_path / "pwned.txt"

    class CallsPrint:  # a builtin outside the inert list: refused before it is called
        def __reduce__(self):
            return (print, (str(marker),))

    path = tmp_path / "evil.ckpt"
    torch.save({"x": CallsPrint()}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(UserError, match="it names `builtins.print`"):
        load_untrusted_checkpoint(path)


def resident_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_untouched_tensors_are_not_read_into_memory(tmp_path):
    """A checkpoint carrying a large optimizer state (SAYCam GPT files: 9 GB for 730M
    parameters): loading it maps the file, so only the tensors used are read."""
    path = tmp_path / "big.ckpt"
    torch.save({"state_dict": {"w": torch.arange(4.0)}, "optimizer_states": [{"m": torch.ones(64 * 2**20)}]}, path)
    before = resident_bytes()
    ckpt = load_untrusted_checkpoint(path)
    assert resident_bytes() - before < 64 * 2**20  # the 256 MB state was not read
    assert torch.equal(find_state_dict(ckpt)["w"], torch.arange(4.0))
    ckpt["state_dict"]["w"] += 1  # a private mapping: the file is not written
    assert torch.equal(load_untrusted_checkpoint(path)["state_dict"]["w"], torch.arange(4.0))
