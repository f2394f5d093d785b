"""halluscope.tokenizers owns the VQ tokenizers that turn images and clips into grids of
discrete tokens and back: the image VQGAN (taming-transformers' modules), the clip
tokenizers (framewise and 3D VQGAN), their training, the taming checkpoint importer and
token caches. It may import `halluscope.data`, never gpt, probes or app."""

from halluscope.tokenizers.config import FramewiseConfig, VQGAN3DConfig, VQGANConfig, preset
from halluscope.tokenizers.framewise import Framewise
from halluscope.tokenizers.load import Tokenizer, build_tokenizer, load_tokenizer, save_tokenizer
from halluscope.tokenizers.vqgan import VQGAN
from halluscope.tokenizers.vqgan3d import VQGAN3D

__all__ = [
    "Tokenizer", "load_tokenizer", "save_tokenizer", "build_tokenizer", "preset",
    "VQGANConfig", "FramewiseConfig", "VQGAN3DConfig", "VQGAN", "VQGAN3D", "Framewise",
]
